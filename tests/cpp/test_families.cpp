// The family pairs (Top-k, dense) and the canonical NaN, without Python; CUDA parity where a
// GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <limits>

#include "csrc/cpu_storage.h"
#include "csrc/message_layout.h"
#include "csrc/ops.h"
#include "tests/cpp/test_helpers.h"

namespace efcomm {
namespace {

// Splits a Top-k message back into (values, indices) following kernels/wire_layout.h.
std::pair<at::Tensor, at::Tensor> unpack(const at::Tensor& message, int64_t k, at::ScalarType dtype) {
  const wire::SparseLayout layout = sparse_layout_of(k, dtype);
  const at::Tensor values = message.narrow(0, 0, layout.value_bytes).view(dtype);
  const at::Tensor indices = message.narrow(0, layout.indices_offset, 4 * k).view(at::kInt);
  return {values, indices};
}

uint32_t bits_of(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return bits;
}

TEST(WireLayout, SizesAreAlignedAndFixed) {
  EXPECT_EQ(sparse_layout_of(1, at::kFloat).nbytes, 8);
  EXPECT_EQ(sparse_layout_of(1, at::kHalf).nbytes, 8);  // 2 value bytes + 2 padding + 4
  EXPECT_EQ(sparse_layout_of(2, at::kBFloat16).nbytes, 12);
  EXPECT_EQ(sparse_layout_of(3, at::kBFloat16).indices_offset, 8);
  EXPECT_EQ(dense_layout_of(3, at::kHalf).nbytes, 8);
  const wire::QuantLayout q = wire::quant_layout(300, 128, 3);
  EXPECT_EQ(q.nblocks, 3);
  EXPECT_EQ(q.words_per_block, 12);
  EXPECT_EQ(q.nbytes, 12 + 3 * 48);
  // Codes straddle words: write then read back every code of a 3-bit block.
  std::vector<uint32_t> words(q.nbytes / 4, 0);
  auto* bytes = reinterpret_cast<uint8_t*>(words.data());
  for (int64_t i = 0; i < 300; ++i) wire::write_code(bytes, q, i, static_cast<uint32_t>(i % 8));
  for (int64_t i = 0; i < 300; ++i) EXPECT_EQ(wire::read_code(bytes, q, i), static_cast<uint32_t>(i % 8)) << i;
}

TEST(CanonicalNan, EveryFormatWritesOneNan) {
  const float negative_nan = -std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(bits_of(store<float>(negative_nan)), 0x7FC00000u);
  EXPECT_EQ(store<c10::BFloat16>(negative_nan).x, 0x7FC0);
  EXPECT_EQ(store<c10::Half>(negative_nan).x, 0x7E00);
  EXPECT_EQ(store<c10::Half>(1.0f).x, 0x3C00);  // other values: rounded to nearest even
  EXPECT_EQ(float_field(INFINITY - INFINITY), 0x7FC00000u);
}

TEST(TopkEncodeCpu, SelectsTopkOfDifferenceAndUpdatesState) {
  torch::manual_seed(7);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const int64_t n = 769, k = 11;
    const at::Tensor g = torch::randn({n}).to(dtype);
    at::Tensor h_local = torch::randn({n}).to(dtype);
    const at::Tensor h_before = h_local.clone();
    const at::Tensor d = (g.to(at::kFloat) - h_before.to(at::kFloat)).to(dtype);

    const at::Tensor message = topk_encode_cpu(g, h_local, k);
    ASSERT_EQ(message.numel(), sparse_layout_of(k, dtype).nbytes);
    const auto [values, indices] = unpack(message, k, dtype);
    const std::vector<int64_t> expected = testing::brute_force_topk(d, k);
    EXPECT_EQ(testing::to_vector(indices), expected);
    const at::Tensor idx = indices.to(at::kLong);
    EXPECT_TRUE(torch::equal(values, d.index_select(0, idx)));

    at::Tensor expected_h = h_before.clone();
    expected_h.index_put_(
        {idx}, (h_before.index_select(0, idx).to(at::kFloat) + d.index_select(0, idx).to(at::kFloat)).to(dtype));
    EXPECT_TRUE(torch::equal(h_local, expected_h)) << dtype;
  }
}

TEST(TopkEncodeCpu, ErrorFeedbackComposition) {
  const at::Tensor g = torch::tensor({1.0f, -4.0f, 0.5f, 2.0f});
  at::Tensor e = torch::tensor({0.5f, 1.0f, -3.0f, 0.0f});
  // p = g + e = {1.5, -3, -2.5, 2}: Top-2 by magnitude is {-3 at 1, -2.5 at 2}.
  e.add_(g);
  const at::Tensor message = topk_encode_cpu(e, std::nullopt, 2);
  topk_decode_add_cpu(e, message.unsqueeze(0), 2, -1.0);
  const auto [values, indices] = unpack(message, 2, at::kFloat);
  EXPECT_EQ(testing::to_vector(indices), (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(torch::equal(values, torch::tensor({-3.0f, -2.5f})));
  EXPECT_TRUE(torch::equal(e, torch::tensor({1.5f, 0.0f, 0.0f, 2.0f})));
  const auto [plain_values, plain_indices] = unpack(topk_encode_cpu(g, std::nullopt, 2), 2, at::kFloat);
  EXPECT_EQ(testing::to_vector(plain_indices), (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(torch::equal(plain_values, torch::tensor({-4.0f, 2.0f})));
}

TEST(TopkEncodeCpu, NanFromInfMinusInfIsCanonical) {
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor g = torch::tensor({1.0f, INFINITY, -2.0f}).to(dtype);
    at::Tensor h = torch::tensor({0.0f, INFINITY, 0.0f}).to(dtype);
    const at::Tensor message = topk_encode_cpu(g, h, 1);
    const uint32_t canonical = dtype == at::kFloat ? 0x7FC00000u : dtype == at::kBFloat16 ? 0x7FC0u : 0x7E00u;
    uint32_t value = 0, state = 0;
    std::memcpy(&value, message.const_data_ptr<uint8_t>(), h.element_size());
    std::memcpy(&state, static_cast<const uint8_t*>(h.const_data_ptr()) + h.element_size(), h.element_size());
    EXPECT_EQ(value, canonical) << dtype;
    EXPECT_EQ(state, canonical) << dtype;
  }
}

TEST(TopkDecodeCpu, AddsMeanOfMessagesInRankOrder) {
  const int64_t n = 10, k = 2;
  // Rank 0 sends {1: 4, 3: 2}, rank 1 sends {3: 6, 9: -8}.
  at::Tensor g0 = torch::zeros({n});
  g0[1] = 4.0f;
  g0[3] = 2.0f;
  at::Tensor g1 = torch::zeros({n});
  g1[3] = 6.0f;
  g1[9] = -8.0f;
  const at::Tensor gathered =
      torch::stack({topk_encode_cpu(g0, std::nullopt, k), topk_encode_cpu(g1, std::nullopt, k)});
  at::Tensor h = torch::ones({n});
  topk_decode_add_cpu(h, gathered, k);
  at::Tensor expected = torch::ones({n});
  expected[1] = 3.0f;
  expected[3] = 5.0f;
  expected[9] = -3.0f;
  EXPECT_TRUE(torch::equal(h, expected));
  // With weights (0.5, 0.25) and scale 2: h += 2 * (0.5 c_0 + 0.25 c_1).
  topk_decode_add_cpu(h, gathered, k, 2.0, torch::tensor({0.5f, 0.25f}));
  expected[1] = 7.0f;
  expected[3] = 10.0f;
  expected[9] = -7.0f;
  EXPECT_TRUE(torch::equal(h, expected));
}

TEST(TopkDecodeCpu, RejectsCorruptIndex) {
  at::Tensor message = topk_encode_cpu(torch::arange(8, torch::kFloat), std::nullopt, 1);
  message.narrow(0, 4, 4).view(at::kInt).fill_(99);
  at::Tensor h = torch::zeros({8});
  EXPECT_THROW(topk_decode_add_cpu(h, message.unsqueeze(0), 1), c10::Error);
}

TEST(DenseCpu, ClipsTheDifferenceAndDecodesTheMean) {
  const at::Tensor g = torch::tensor({3.0f, 4.0f});
  at::Tensor h_local = torch::zeros({2});
  // ||g - h|| = 5 > clip = 1: c = (0.6, 0.8).
  const at::Tensor message = dense_encode_cpu(g, h_local, 1.0);
  ASSERT_EQ(message.numel(), 8);
  EXPECT_TRUE(torch::allclose(message.view(at::kFloat), torch::tensor({0.6f, 0.8f})));
  EXPECT_TRUE(torch::equal(h_local, message.view(at::kFloat)));
  // Below clip nothing is scaled: c = d exactly; without clip, LAG's message.
  at::Tensor h_small = torch::zeros({2});
  const at::Tensor small = dense_encode_cpu(torch::tensor({0.25f, -0.5f}), h_small, 1.0);
  EXPECT_TRUE(torch::equal(small.view(at::kFloat), torch::tensor({0.25f, -0.5f})));
  at::Tensor h_lag = torch::tensor({0.0f, 1.0f});
  EXPECT_TRUE(
      torch::equal(dense_encode_cpu(torch::tensor({1.0f, 1.0f}), h_lag).view(at::kFloat), torch::tensor({1.0f, 0.0f})));
  EXPECT_TRUE(torch::equal(h_lag, torch::tensor({1.0f, 1.0f})));

  at::Tensor h = torch::ones({2});
  dense_decode_add_cpu(h, torch::stack({message, small}));
  EXPECT_TRUE(torch::allclose(h, torch::tensor({1.425f, 1.15f})));
  at::Tensor one_of_two = torch::zeros({2});
  dense_decode_add_cpu(one_of_two, small.unsqueeze(0), 1.0, torch::tensor({0.5f}));
  EXPECT_TRUE(torch::equal(one_of_two, torch::tensor({0.125f, -0.25f})));
}

TEST(LazyCpu, TriggerComparesDistances) {
  const at::Tensor g = torch::tensor({1.0f, 1.0f});
  const at::Tensor h_local = torch::tensor({0.0f, 1.0f});  // ||g - h||^2 = 1
  const at::Tensor y = torch::tensor({1.0f, 0.0f});        // ||g - y||^2 = 1
  EXPECT_TRUE(lazy_trigger_cpu(g, h_local, y, 0.5).item<bool>());
  EXPECT_FALSE(lazy_trigger_cpu(g, h_local, y, 1.0).item<bool>());  // strict inequality
}

TEST(FamiliesCuda, EncodeAndDecodeMatchCpuReference) {
#ifdef EFCOMM_WITH_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(11);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const int64_t n = (1 << 20) + 3, k = 10486, world = 4;
    std::vector<at::Tensor> cpu_messages, gpu_messages;
    for (int64_t r = 0; r < world; ++r) {
      const at::Tensor g = torch::randn({n}).to(dtype);
      at::Tensor h_cpu = torch::randn({n}).to(dtype);
      at::Tensor h_gpu = h_cpu.cuda();
      cpu_messages.push_back(topk_encode_cpu(g, h_cpu, k, 0.5));
      gpu_messages.push_back(topk_encode_cuda(g.cuda(), h_gpu, k, 0.5));
      EXPECT_TRUE(torch::equal(cpu_messages.back(), gpu_messages.back().cpu())) << dtype;
      EXPECT_TRUE(torch::equal(h_cpu, h_gpu.cpu())) << dtype;
      EXPECT_TRUE(torch::equal(dense_encode_cpu(g, h_cpu), dense_encode_cuda(g.cuda(), h_gpu).cpu())) << dtype;
      EXPECT_TRUE(torch::equal(h_cpu, h_gpu.cpu())) << dtype;
    }
    const at::Tensor weights = torch::rand({world});
    for (const bool weighted : {false, true}) {
      at::Tensor h_cpu = torch::randn({n}).to(dtype);
      at::Tensor h_gpu = h_cpu.cuda();
      const std::optional<at::Tensor> w_cpu = weighted ? std::optional<at::Tensor>(weights) : std::nullopt;
      const std::optional<at::Tensor> w_gpu = weighted ? std::optional<at::Tensor>(weights.cuda()) : std::nullopt;
      topk_decode_add_cpu(h_cpu, torch::stack(cpu_messages), k, -0.5, w_cpu);
      topk_decode_add_cuda(h_gpu, torch::stack(gpu_messages), k, -0.5, w_gpu);
      EXPECT_TRUE(torch::equal(h_cpu, h_gpu.cpu())) << dtype;
    }
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

TEST(DenseCuda, ClipMatchesCpuReferenceWithinTolerance) {
#ifdef EFCOMM_WITH_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const at::Tensor g = torch::randn({(1 << 20) + 3});
  at::Tensor h_cpu = torch::randn({(1 << 20) + 3});
  at::Tensor h_gpu = h_cpu.cuda();
  const at::Tensor m_cpu = dense_encode_cpu(g, h_cpu, 0.5);
  const at::Tensor m_gpu = dense_encode_cuda(g.cuda(), h_gpu, 0.5);
  // The norm is reduced in another order on the GPU: a relative 1e-6 on the clipped values.
  EXPECT_TRUE(torch::allclose(m_gpu.cpu().view(at::kFloat), m_cpu.view(at::kFloat), 1e-6, 0.0));
  at::Tensor d_cpu = torch::randn({(1 << 20) + 3});
  at::Tensor d_gpu = d_cpu.cuda();
  const at::Tensor rows = torch::stack({m_cpu, m_cpu});
  dense_decode_add_cpu(d_cpu, rows);
  dense_decode_add_cuda(d_gpu, rows.cuda());
  EXPECT_TRUE(torch::equal(d_cpu, d_gpu.cpu()));
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
}  // namespace efcomm
