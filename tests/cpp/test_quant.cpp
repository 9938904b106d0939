// The counter-based generator, the quantizer codecs and registry, Rand-k's rule, and the quantizer
// and Rand-k ops, without Python.
#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/util/Float8_e4m3fn.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "csrc/ops.h"
#include "kernels/counter_rng.h"
#include "kernels/quant_pack.h"
#include "kernels/quant_schemes.h"
#include "kernels/randk_rule.h"

namespace efcomm {
namespace {

// Known-answer vectors of Philox4x32-10 from Random123's kat_vectors.
TEST(CounterRng, Philox4x32x10KnownAnswers) {
  const rng::Block zero = rng::philox4x32_10(0, 0, 0, 0, 0);
  EXPECT_EQ(zero.w[0], 0x6627e8d5u);
  EXPECT_EQ(zero.w[1], 0xe169c58du);
  EXPECT_EQ(zero.w[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.w[3], 0x9b00dbd8u);
  const rng::Block ones = rng::philox4x32_10(~0u, ~0u, ~0u, ~0u, ~uint64_t{0});
  EXPECT_EQ(ones.w[0], 0x408f276du);
  EXPECT_EQ(ones.w[1], 0x41c83b0eu);
  EXPECT_EQ(ones.w[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.w[3], 0x6d5451fdu);
  const rng::Block pi = rng::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u,
                                           (uint64_t{0x299f31d0u} << 32) | 0xa4093822u);
  EXPECT_EQ(pi.w[0], 0xd16cfe09u);
  EXPECT_EQ(pi.w[1], 0x94fdccebu);
  EXPECT_EQ(pi.w[2], 0x5001e420u);
  EXPECT_EQ(pi.w[3], 0x24126ea1u);
}

// draw(seed, stream, e) is word e % 4 of at::philox_engine(seed, stream, e / 4): PyTorch's own.
TEST(CounterRng, MatchesPyTorchsPhiloxEngine) {
  for (const uint64_t seed : {uint64_t{0}, uint64_t{42}, uint64_t{0x123456789abcdefull}}) {
    for (const uint64_t stream : {uint64_t{0}, rng::stream_id(3, 7, rng::kStochasticRounding, 1)}) {
      at::philox_engine engine(seed, stream, 0);
      for (uint64_t e = 0; e < 64; ++e) {
        EXPECT_EQ(rng::draw(seed, stream, e), engine()) << "seed " << seed << " element " << e;
      }
    }
  }
  EXPECT_NE(rng::stream_id(0, 0, rng::kStochasticRounding, 0), rng::stream_id(0, 0, rng::kStochasticRounding, 1));
  EXPECT_NE(rng::stream_id(0, 0, rng::kRandKIndices, rng::kSharedRank),
            rng::stream_id(1, 0, rng::kRandKIndices, rng::kSharedRank));
  EXPECT_EQ(rng::to_unit_float(0u), 0.0f);
  EXPECT_LT(rng::to_unit_float(~0u), 1.0f);
}

// Every finite e4m3 value encodes to its own code, and rounding agrees with c10::Float8_e4m3fn
// (round to nearest even) over a sweep of magnitudes up to 448.
TEST(QuantCodec, E4m3RoundingMatchesC10) {
  using quant::Fp8Codec;
  for (uint32_t code = 0; code <= 0x7E; ++code) {
    EXPECT_EQ(Fp8Codec::magnitude_code(Fp8Codec::magnitude(code), 0.0f, false), code);
  }
  for (float a = 1e-4f; a <= 448.0f; a *= 1.0007f) {
    const c10::Float8_e4m3fn reference(a);
    EXPECT_EQ(Fp8Codec::magnitude_code(a, 0.0f, false), static_cast<uint32_t>(reference.x)) << a;
  }
}

TEST(QuantCodec, BitsPerEntry) {
  EXPECT_EQ(quant::QsgdCodec::bits(1), 2);
  EXPECT_EQ(quant::QsgdCodec::bits(3), 3);
  EXPECT_EQ(quant::QsgdCodec::bits(7), 4);
  EXPECT_EQ(quant::QsgdCodec::bits(15), 5);
  EXPECT_EQ(quant::QsgdCodec::bits(127), 8);
  EXPECT_EQ(quant::SignCodec::bits(0), 1);
  EXPECT_EQ(quant::NaturalCodec::bits(0), 8);
  EXPECT_EQ(quant::Int8Codec::bits(0), 8);
  EXPECT_EQ(quant::Int4Codec::bits(0), 4);
}

// The registry names every scheme once, and ids follow the list.
TEST(QuantCodec, RegistryLooksUpEveryScheme) {
  int32_t id = 0;
  std::vector<std::string> names;
#define EFCOMM_EXPECT_SCHEME(Codec)                              \
  EXPECT_EQ(quant::scheme_id(Codec::kName), id) << Codec::kName; \
  names.push_back(Codec::kName);                                 \
  ++id;
  EFCOMM_QUANT_SCHEMES(EFCOMM_EXPECT_SCHEME)
#undef EFCOMM_EXPECT_SCHEME
  EXPECT_EQ(quant::scheme_id("bits"), -1);
  EXPECT_FALSE(quant::with_codec(id, [](auto) {}));
  EXPECT_EQ(names.front(), "qsgd");
  EXPECT_NE(quant::scheme_names().find("'fp8'"), std::string::npos);
}

// Sign extension of the scaled integers and the saturation of natural's exponent.
TEST(QuantCodec, DecodesAnyHeaderBits) {
  EXPECT_EQ(quant::Int8Codec::decode(float_field(0.5f), 0x81, 0), -63.5f);
  EXPECT_EQ(quant::NaturalCodec::decode(0x7FFFFFFFu, 0x01, 0), INFINITY);
  EXPECT_EQ(quant::NaturalCodec::decode(0x80000001u, 0x81, 0), -0.0f);
  EXPECT_TRUE(std::isnan(quant::NaturalCodec::decode(0x80000000u, 0x01, 0)));
  EXPECT_EQ(quant::Int8Codec::decode(0x00000001u, 0x02, 0), 2 * 1.40129846e-45f);  // a subnormal scale
  EXPECT_EQ(quant::Int4Codec::decode(float_field(0.5f), 0x9, 0), -3.5f);           // 4-bit -7
  EXPECT_EQ(quant::Int4Codec::encode(float_field(0.5f), -3.4f, 0.0f, false, 0), 0x9u);
  EXPECT_EQ(quant::Int4Codec::encode(float_field(0.5f), 9.0f, 0.0f, false, 0), 0x7u);  // clamped to 7
}

// The kernels' packing (kernels/quant_pack.h), run lane by lane on the host: each word gathered
// from the lanes' groups equals the wire layout's (write_code), for every width and for blocks
// whose last sweep is short; each group read back gives read_code's codes.
TEST(QuantPack, WarpGatherMatchesTheWireLayout) {
  for (int bits = 1; bits <= 8; ++bits) {
    for (const int64_t block : {int64_t{32}, int64_t{96}, int64_t{128}, int64_t{160}, int64_t{512}}) {
      const wire::QuantLayout layout = wire::quant_layout(block, block, bits);
      std::vector<uint32_t> expected(layout.nbytes / 4, 0);
      auto* message = reinterpret_cast<uint8_t*>(expected.data());
      std::vector<uint32_t> codes(block);
      for (int64_t e = 0; e < block; ++e) {
        codes[e] = rng::draw(bits, 7, e) & ((1u << bits) - 1u);
        wire::write_code(message, layout, e, codes[e]);
      }
      const uint32_t* words = expected.data() + layout.codes_offset / 4;
      for (int64_t sweep = 0; sweep < block; sweep += 128) {
        uint32_t groups[32] = {};
        for (int lane = 0; lane < 32; ++lane) {
          for (int q = 0; q < 4; ++q) {
            const int64_t e = sweep + 4 * lane + q;
            if (e < block) groups[lane] |= codes[e] << (q * bits);
          }
        }
        const int64_t sweep_words = std::min<int64_t>(block - sweep, 128) * bits / 32;
        for (int w = 0; w < sweep_words; ++w) {
          uint32_t word = 0;
          for (int j = 0; j < quant::lanes_per_word(bits); ++j) {
            const int l = quant::first_lane(w, bits) + j;
            if (l <= quant::last_lane(w, bits) && l < 32) word |= quant::word_part(groups[l], l, w, bits);
          }
          EXPECT_EQ(word, words[sweep * bits / 32 + w]) << "bits " << bits << " block " << block << " word " << w;
        }
      }
      for (int64_t e = 0; e < block; e += 4) {
        const uint32_t group = quant::read_group(words, e * bits, bits);
        for (int q = 0; q < 4; ++q) EXPECT_EQ(quant::code_of(group, q, bits), codes[e + q]) << bits << " " << e;
      }
    }
  }
}

TEST(QuantOps, Int8RoundTripIsExactOnItsGrid) {
  const at::Tensor x = torch::arange(-127, 128, torch::kFloat).mul(0.25);
  const at::Tensor message = quant_encode_cpu(x, std::nullopt, "int8", 0, 256, false, 0, 0, 0, 0);
  EXPECT_EQ(message.numel(), 4 + 256);
  at::Tensor out = torch::zeros({255});
  quant_decode_add_cpu(out, message.unsqueeze(0), "int8", 0, 256);
  EXPECT_TRUE(torch::equal(out, x));
}

TEST(RandkRule, PermutationIsABijectionOfEverySize) {
  for (const int64_t n :
       {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{255}, int64_t{256}, int64_t{257}, int64_t{5000}}) {
    const randk::Permutation pi = randk::permutation(3, rng::randk_stream(1, 2, -1), n);
    std::vector<bool> seen(n, false);
    for (int64_t t = 0; t < n; ++t) {
      const uint32_t i = pi(static_cast<uint32_t>(t));
      ASSERT_LT(i, static_cast<uint32_t>(n));
      EXPECT_FALSE(seen[i]) << "n " << n << " value " << i;
      seen[i] = true;
    }
  }
}

TEST(RandkRule, WindowInAscendingOrder) {
  // n = 10, k = 4 from offset 8: message order 8, 9, 0, 1; ascending 0, 1, 8, 9.
  std::vector<int64_t> message, ascending;
  for (int64_t t = 0; t < 4; ++t) {
    message.push_back(randk::window_index(8, 10, 4, t, false));
    ascending.push_back(randk::window_index(8, 10, 4, t, true));
  }
  EXPECT_EQ(message, (std::vector<int64_t>{8, 9, 0, 1}));
  EXPECT_EQ(ascending, (std::vector<int64_t>{0, 1, 8, 9}));
}

TEST(RandkOps, IndicesAreSharedDistinctAndInRange) {
  const at::Tensor x = torch::zeros({1000});
  const at::Tensor a = randk_indices_cpu(x, 100, 5, 2, 3, false);
  EXPECT_TRUE(torch::equal(a, randk_indices_cpu(x, 100, 5, 2, 3, false)));
  EXPECT_TRUE(torch::equal(a, std::get<0>(at::_unique(a, /*sorted=*/true))));
  EXPECT_GE(a.min().item<int64_t>(), 0);
  EXPECT_LT(a.max().item<int64_t>(), 1000);
  EXPECT_FALSE(torch::equal(a, randk_indices_cpu(x, 100, 5, 2, 3, false, 0)));  // a rank's own
}

#ifdef EFCOMM_WITH_CUDA
struct QuantCase {
  const char* scheme;
  int64_t levels;
  bool stochastic;
};

void PrintTo(const QuantCase& c, std::ostream* os) {
  *os << c.scheme << " levels=" << c.levels << (c.stochastic ? " stochastic" : " nearest");
}

class QuantCudaTest : public ::testing::TestWithParam<QuantCase> {};

TEST_P(QuantCudaTest, MatchesCpuBitForBit) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const QuantCase c = GetParam();
  for (const int64_t numel : {int64_t{1}, int64_t{7}, int64_t{769}, (int64_t{1} << 20) + 3}) {
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      torch::manual_seed(numel);
      const at::Tensor x = torch::randn({numel}).to(dtype);
      const at::Tensor cpu = quant_encode_cpu(x, std::nullopt, c.scheme, c.levels, 256, c.stochastic, 9, 1, 2, 3);
      const at::Tensor gpu =
          quant_encode_cuda(x.cuda(), std::nullopt, c.scheme, c.levels, 256, c.stochastic, 9, 1, 2, 3);
      ASSERT_TRUE(torch::equal(cpu, gpu.cpu())) << c.scheme << " numel " << numel;
      const at::Tensor gathered = torch::stack({cpu, cpu.flip(0)});
      at::Tensor h_cpu = torch::zeros({numel}, x.options());
      at::Tensor h_gpu = h_cpu.cuda();
      quant_decode_add_cpu(h_cpu, gathered, c.scheme, c.levels, 256, 0.5);
      quant_decode_add_cuda(h_gpu, gathered.cuda(), c.scheme, c.levels, 256, 0.5);
      // Byte for byte: the reversed row's headers are arbitrary bits (NaN, inf, subnormal).
      EXPECT_TRUE(torch::equal(h_cpu.view(at::kByte), h_gpu.cpu().view(at::kByte))) << c.scheme << " numel " << numel;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Schemes, QuantCudaTest,
                         ::testing::Values(QuantCase{"qsgd", 7, true}, QuantCase{"qsgd", 3, true},
                                           QuantCase{"natural", 0, true}, QuantCase{"sign", 0, false},
                                           QuantCase{"int8", 0, false}, QuantCase{"int8", 0, true},
                                           QuantCase{"fp8", 0, false}, QuantCase{"fp8", 0, true},
                                           QuantCase{"int4", 0, false}, QuantCase{"int4", 0, true}),
                         [](const ::testing::TestParamInfo<QuantCase>& info) {
                           return std::string(info.param.scheme) + "_" + std::to_string(info.param.levels) +
                                  (info.param.stochastic ? "_stochastic" : "_nearest");
                         });

TEST(RandkCuda, MatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const at::Tensor x = torch::randn({(1 << 20) + 3});
  for (const bool window : {false, true}) {
    for (const std::optional<int64_t> rank : {std::optional<int64_t>(), std::optional<int64_t>(2)}) {
      EXPECT_TRUE(torch::equal(randk_indices_cpu(x, 1000, 1, 2, 3, window, rank),
                               randk_indices_cuda(x.cuda(), 1000, 1, 2, 3, window, rank).cpu()));
      EXPECT_TRUE(torch::equal(randk_encode_cpu(x, std::nullopt, 1000, 1, 2, 3, window, 1.0, rank),
                               randk_encode_cuda(x.cuda(), std::nullopt, 1000, 1, 2, 3, window, 1.0, rank).cpu()));
    }
  }
}
#endif

}  // namespace
}  // namespace efcomm
