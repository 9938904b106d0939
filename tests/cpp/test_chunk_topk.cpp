// Chunked Top-k's shared arithmetic (kernels/chunk_topk_rule.h), its wire layout, and the ops
// without Python; CUDA parity where a GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "csrc/message_layout.h"
#include "csrc/ops.h"
#include "kernels/chunk_topk_rule.h"

namespace efcomm {
namespace {

TEST(ChunkTopkRule, LevelsAreSymmetricWithoutZeroAndTheEndsAreExact) {
  for (const int64_t bits : {2, 4, 8}) {
    const uint32_t top = chunk_topk::top_code(bits);
    EXPECT_EQ(chunk_topk::level(0, bits), -1.0f);
    EXPECT_EQ(chunk_topk::level(top, bits), 1.0f);
    for (uint32_t q = 0; q <= top; ++q) {
      EXPECT_NE(chunk_topk::level(q, bits), 0.0f);
      EXPECT_EQ(chunk_topk::level(q, bits), -chunk_topk::level(top - q, bits));
    }
  }
  EXPECT_EQ(chunk_topk::level(2, 2), 1.0f / 3.0f);
  const float s = 0.37f;
  EXPECT_EQ(chunk_topk::decode(s, 3, 2), s);  // the largest entry comes back exactly
  EXPECT_EQ(chunk_topk::decode(s, 0, 2), -s);
}

TEST(ChunkTopkRule, RoundsToTheNearestLevel) {
  const float s = 3.0f;
  EXPECT_EQ(chunk_topk::encode(3.0f, s, 2), 3u);
  EXPECT_EQ(chunk_topk::encode(-3.0f, s, 2), 0u);
  EXPECT_EQ(chunk_topk::encode(1.0f, s, 2), 2u);
  EXPECT_EQ(chunk_topk::encode(-1.0f, s, 2), 1u);
  EXPECT_EQ(chunk_topk::encode(2.1f, s, 2), 3u);
  EXPECT_EQ(chunk_topk::encode(1.9f, s, 2), 2u);
  EXPECT_EQ(chunk_topk::encode(0.0f, s, 2), 2u);  // the tie goes to the even code: +s/3
  EXPECT_EQ(chunk_topk::encode(-0.0f, s, 2), 2u);
  // Every value within s errs by at most s / L, for every width.
  for (const int64_t bits : {2, 4, 8}) {
    const float top = static_cast<float>(chunk_topk::top_code(bits));
    for (float x = -s; x <= s; x += 0.001f) {
      const float v = chunk_topk::decode(s, chunk_topk::encode(x, s, bits), bits);
      EXPECT_LE(std::fabs(v - x), s / top * 1.000001f) << x << " " << bits;
    }
  }
}

TEST(ChunkTopkRule, ZeroAndNonFiniteScalesCodeBySign) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const float s : {0.0f, inf, nan}) {
    EXPECT_EQ(chunk_topk::encode(-1.0f, s, 4), 0u);
    EXPECT_EQ(chunk_topk::encode(2.0f, s, 4), 15u);
  }
  EXPECT_EQ(chunk_topk::decode(0.0f, 15, 4), 0.0f);
  EXPECT_EQ(chunk_topk::decode(inf, 0, 4), -inf);
  EXPECT_EQ(chunk_topk::encode(-inf, inf, 2), 0u);
  EXPECT_TRUE(std::isnan(chunk_topk::decode(nan, 3, 2)));
}

TEST(ChunkTopkRule, MagnitudeKeysOrderMagnitudesAndPutNanFirst) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(chunk_topk::magnitude_key(-0.0f), chunk_topk::magnitude_key(0.0f));
  EXPECT_EQ(chunk_topk::magnitude_key(-2.0f), chunk_topk::magnitude_key(2.0f));
  EXPECT_LT(chunk_topk::magnitude_key(1.0f), chunk_topk::magnitude_key(-1.5f));
  EXPECT_LT(chunk_topk::magnitude_key(3e38f), chunk_topk::magnitude_key(-inf));
  EXPECT_LT(chunk_topk::magnitude_key(inf), chunk_topk::magnitude_key(-std::numeric_limits<float>::quiet_NaN()));
  EXPECT_EQ(chunk_topk::magnitude_of_key(chunk_topk::magnitude_key(-2.5f)), 2.5f);
  EXPECT_TRUE(std::isnan(chunk_topk::magnitude_of_key(0xFFFFFFFFu)));
}

TEST(ChunkTopkLayout, SizesAndFieldsFollowTheDocumentedLayout) {
  const wire::ChunkTopkLayout full = wire::chunk_topk_layout(4096 * 3, 4096, 82, 2);
  EXPECT_EQ(full.field_bits, 14);
  EXPECT_EQ(full.words_per_chunk, 36);
  EXPECT_EQ(full.nbytes, 3 * 148);
  const wire::ChunkTopkLayout tail = wire::chunk_topk_layout(4097, 4096, 82, 4);
  EXPECT_EQ(tail.chunks, 2);
  EXPECT_EQ(tail.kept(1), 1);
  EXPECT_EQ(tail.nbytes, 8 + 4 * 41 + 4);
  EXPECT_EQ(wire::chunk_topk_layout(7, 32, 32, 8).nbytes, 4 + 4 * 3);  // 7 fields of 13 bits: 91 bits
  EXPECT_EQ(message_nbytes("chunktopk", 4096 * 3, at::kBFloat16, 82, "", 0, 4096, 2), 3 * 148);
  // Fields straddle words: write then read back every field of a region.
  std::vector<uint32_t> words(64, 0);
  for (int64_t e = 0; e < 100; ++e) wire::write_field(words.data(), e, 14, static_cast<uint32_t>((e * 97) % 16384));
  for (int64_t e = 0; e < 100; ++e) EXPECT_EQ(wire::read_field(words.data(), e, 14), (e * 97) % 16384) << e;
}

TEST(ChunkTopkCpu, EncodeWithStateEqualsDecodeOfItsMessage) {
  torch::manual_seed(3);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor a = torch::randn({9000}).to(dtype);
    const at::Tensor b = torch::randn({9000}).to(dtype);
    at::Tensor fused = b.clone();
    const at::Tensor message = chunktopk_encode_cpu(a, fused, 82, 4096, 2, 0.5);
    EXPECT_TRUE(torch::equal(message, chunktopk_encode_cpu((a.to(at::kFloat) - b.to(at::kFloat)).to(dtype),
                                                           std::nullopt, 82, 4096, 2, 1.0)));
    at::Tensor composed = b.clone();
    chunktopk_decode_add_cpu(composed, message.unsqueeze(0), 82, 4096, 2, 0.5);
    EXPECT_TRUE(torch::equal(fused, composed));
  }
}

TEST(ChunkTopkCpu, RejectsBadConfigurationsNamingThem) {
  const at::Tensor a = torch::randn({100});
  EXPECT_THROW(chunktopk_encode_cpu(a, std::nullopt, 0, 4096, 2, 1.0), c10::Error);
  EXPECT_THROW(chunktopk_encode_cpu(a, std::nullopt, 5000, 4096, 2, 1.0), c10::Error);
  EXPECT_THROW(chunktopk_encode_cpu(a, std::nullopt, 2, 48, 2, 1.0), c10::Error);
  EXPECT_THROW(chunktopk_encode_cpu(a, std::nullopt, 2, 4096, 3, 1.0), c10::Error);
}

TEST(ChunkTopkCuda, MatchesCpuReference) {
#ifdef EFCOMM_WITH_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(5);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor a = torch::randn({20000}).to(dtype);
    at::Tensor b_cpu = torch::randn({20000}).to(dtype);
    at::Tensor b_cuda = b_cpu.cuda();
    const at::Tensor m_cpu = chunktopk_encode_cpu(a, b_cpu, 82, 4096, 2, 1.0);
    const at::Tensor m_cuda = chunktopk_encode_cuda(a.cuda(), b_cuda, 82, 4096, 2, 1.0);
    EXPECT_TRUE(torch::equal(m_cuda.cpu(), m_cpu));
    EXPECT_TRUE(torch::equal(b_cuda.cpu(), b_cpu));
    at::Tensor h_cpu = torch::zeros({20000}, dtype);
    at::Tensor h_cuda = h_cpu.cuda();
    const at::Tensor gathered = torch::stack({m_cpu, chunktopk_encode_cpu(a.flip(0), std::nullopt, 82, 4096, 2, 1.0)});
    chunktopk_decode_add_cpu(h_cpu, gathered, 82, 4096, 2, -0.5);
    chunktopk_decode_add_cuda(h_cuda, gathered.cuda(), 82, 4096, 2, -0.5);
    EXPECT_TRUE(torch::equal(h_cuda.cpu(), h_cpu));
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
}  // namespace efcomm
