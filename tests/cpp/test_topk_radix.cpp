// The sync-free Top-k select (EFCOMM_TOPK_SELECT=radix2) on the CPU: its rules
// (kernels/topk_radix_rule.h) and a host emulation of its kernels (topk_radix_emulation.h) held to
// the CPU reference on awkward inputs; on a GPU, the kernels held to the emulation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/message_layout.h"
#include "csrc/ops.h"
#include "kernels/topk_radix_rule.h"
#include "tests/cpp/topk_radix_emulation.h"

namespace efcomm {
namespace {

namespace rule = topk_radix;

TEST(TopkRadixRule, DigitsCoverEveryKeyBitOnce) {
  const rule::Plan wide = rule::plan_for(rule::key_bits<float>());
  EXPECT_EQ(wide.passes, 3);
  EXPECT_EQ(wide.digit_bits(0), 11);
  EXPECT_EQ(wide.digit_bits(1), 11);
  EXPECT_EQ(wide.digit_bits(2), 9);
  const rule::Plan narrow = rule::plan_for(rule::key_bits<c10::BFloat16>());
  EXPECT_EQ(narrow.passes, 2);
  EXPECT_EQ(narrow.digit_bits(0), 11);
  EXPECT_EQ(narrow.digit_bits(1), 4);
  // The digits, read back from the top, rebuild the key.
  for (const uint32_t key : {0u, 1u, 0x7F800000u, 0x7FFFFFFFu, 0x3F8CCCCDu}) {
    uint32_t rebuilt = 0;
    for (int p = 0; p < wide.passes; ++p) rebuilt = (rebuilt << wide.digit_bits(p)) | wide.digit(key, p);
    EXPECT_EQ(rebuilt, key);
    EXPECT_EQ(wide.top(key, 31), key);
    EXPECT_EQ(wide.top(key, 0), 0u);
  }
}

template <typename T>
std::vector<T> as_storage(const at::Tensor& x) {
  const at::Tensor c = x.contiguous();
  const auto* p = reinterpret_cast<const T*>(c.const_data_ptr());
  return {p, p + c.numel()};
}

TEST(TopkRadixRule, KeysOrderMagnitudesAndPutNanFirst) {
  const at::Tensor values =
      torch::tensor({0.0f, -0.0f, 1e-40f, -1e-30f, 0.5f, -1.0f, 3.0e38f, INFINITY, -INFINITY, NAN});
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor x = values.to(dtype);
    std::vector<uint32_t> keys;
    EFCOMM_DISPATCH_FLOAT_TYPES(dtype, "keys", [&] {
      for (const scalar_t v : as_storage<scalar_t>(x)) keys.push_back(rule::key_of(v));
    });
    const at::Tensor magnitude = x.abs().to(at::kFloat);
    for (size_t i = 0; i < keys.size(); ++i) {
      for (size_t j = 0; j < keys.size(); ++j) {
        const float mi = magnitude[i].item<float>(), mj = magnitude[j].item<float>();
        const bool nan_i = std::isnan(mi), nan_j = std::isnan(mj);
        const bool greater = nan_i ? !nan_j : (!nan_j && mi > mj);
        EXPECT_EQ(keys[i] > keys[j], greater) << dtype << " " << i << " vs " << j;
      }
    }
  }
}

// ---- the emulation against the CPU reference ----

enum class Pattern { kRandn, kAllEqual, kFewValues, kCrowdedBin, kNanAndInf, kZerosAndSubnormals };

at::Tensor make_input(Pattern pattern, int64_t n, int64_t seed) {
  torch::manual_seed(seed);
  const at::Tensor noise = torch::randn({n});
  switch (pattern) {
    case Pattern::kRandn:
      return noise;
    case Pattern::kAllEqual:
      return torch::full({n}, -0.75f);
    case Pattern::kFewValues:
      return torch::randint(-1, 2, {n}).to(at::kFloat);
    // One leading digit for all: the values differ in the low mantissa bits only.
    case Pattern::kCrowdedBin:
      return 1.0f + torch::randint(0, 64, {n}).to(at::kFloat) * std::ldexp(1.0f, -20);
    case Pattern::kNanAndInf: {
      at::Tensor x = noise.clone();
      x.index_put_({torch::rand({n}) < 0.05}, NAN);
      x.index_put_({torch::rand({n}) < 0.05}, INFINITY);
      x.index_put_({torch::rand({n}) < 0.05}, -INFINITY);
      return x;
    }
    case Pattern::kZerosAndSubnormals: {
      at::Tensor x = noise * 1e-39;  // float32 subnormals; zero in the 16-bit formats
      x.index_put_({torch::rand({n}) < 0.3}, -0.0f);
      return x;
    }
  }
  return noise;
}

const char* name_of(Pattern p) {
  static const char* names[] = {"randn", "all_equal", "few_values", "crowded_bin", "nan_and_inf", "zeros_subnormals"};
  return names[static_cast<int>(p)];
}

// The selection the emulation makes for a (b undefined) or T(a - b), against the CPU op's.
void expect_emulation_matches_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k, const std::string& what) {
  const int64_t n = a.numel();
  std::vector<int32_t> emulated;
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "emulate", [&] {
    const std::vector<scalar_t> av = as_storage<scalar_t>(a);
    const std::vector<scalar_t> bv = b.defined() ? as_storage<scalar_t>(b) : std::vector<scalar_t>();
    emulated = testing::emulate_topk_radix(av.data(), b.defined() ? bv.data() : nullptr, n, k, nullptr);
  });
  at::Tensor expected;
  if (b.defined()) {
    const at::Tensor message = topk_encode_cpu(a, b.clone(), k);
    expected = message.narrow(0, sparse_layout_of(k, a.scalar_type()).indices_offset, 4 * k).view(at::kInt);
  } else {
    expected = std::get<1>(topk_cpu(a, k));
  }
  const std::vector<int32_t> want(expected.const_data_ptr<int32_t>(), expected.const_data_ptr<int32_t>() + k);
  EXPECT_EQ(emulated, want) << what;
}

struct Size {
  int64_t n;
  std::vector<int64_t> ks;
};

class TopkRadixEmulation : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(TopkRadixEmulation, MatchesCpuReferenceOnAwkwardInputs) {
  const at::ScalarType dtype = GetParam();
  const std::vector<Size> sizes = {
      {1, {1}}, {7, {1, 3, 7}}, {769, {1, 7, 77, 256, 769}}, {(1 << 20) + 3, {1, 10486, (1 << 20) + 3}}};
  const Pattern patterns[] = {Pattern::kRandn,      Pattern::kAllEqual,  Pattern::kFewValues,
                              Pattern::kCrowdedBin, Pattern::kNanAndInf, Pattern::kZerosAndSubnormals};
  for (const Size& size : sizes) {
    for (const Pattern pattern : patterns) {
      const at::Tensor a = make_input(pattern, size.n, size.n).to(dtype);
      const at::Tensor b = make_input(Pattern::kRandn, size.n, size.n + 1).mul(0.1).to(dtype);
      for (const int64_t k : size.ks) {
        const std::string what =
            std::string(name_of(pattern)) + " n=" + std::to_string(size.n) + " k=" + std::to_string(k);
        expect_emulation_matches_cpu(a, at::Tensor(), k, what);
        expect_emulation_matches_cpu(a, b, k, what + " (a - b)");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(KeyWidths, TopkRadixEmulation, ::testing::Values(at::kFloat, at::kBFloat16, at::kHalf),
                         [](const ::testing::TestParamInfo<at::ScalarType>& info) {
                           return std::string(c10::toString(info.param));
                         });

// The paths the kernels take, seen through the emulation's trace.
template <typename T>
testing::RadixTrace trace_of(const at::Tensor& x, int64_t k, float* hint = nullptr) {
  testing::RadixTrace trace;
  const std::vector<T> v = as_storage<T>(x);
  testing::emulate_topk_radix(v.data(), static_cast<const T*>(nullptr), x.numel(), k, hint, &trace);
  return trace;
}

TEST(TopkRadixEmulation, PathsTaken) {
  const int64_t n = (1 << 20) + 3;
  const at::Tensor x = make_input(Pattern::kRandn, n, 1);
  // k = 1%: pass 1 writes the entries at or above pass 0's bin (about 2k of them), then the
  // later kernels read those; the k-th bin is exact before the last digit.
  const testing::RadixTrace random = trace_of<float>(x, n / 100);
  EXPECT_TRUE(random.compacted);
  EXPECT_TRUE(random.final_from_candidates);
  EXPECT_EQ(random.passes_run, 3);
  EXPECT_EQ(random.pass_len.back(), 1u);
  // k = n: pass 0's bin (the lowest) completes the selection: early stop, the input read again.
  const testing::RadixTrace all = trace_of<float>(x, n);
  EXPECT_EQ(all.passes_run, 1);
  EXPECT_FALSE(all.compacted);
  // Every entry equal: one bin holds n > 4k entries, no compaction; every bit decided, the ties
  // resolved by index in the final write.
  const testing::RadixTrace equal = trace_of<float>(torch::ones({n}), 10);
  EXPECT_FALSE(equal.compacted);
  EXPECT_EQ(equal.passes_run, 3);
  EXPECT_EQ(equal.decided, 31);
  const std::vector<float> ones(n, 1.0f);
  std::vector<int32_t> first_ten(10);
  for (int32_t i = 0; i < 10; ++i) first_ten[i] = i;
  EXPECT_EQ(testing::emulate_topk_radix(ones.data(), static_cast<const float*>(nullptr), n, 10, nullptr), first_ten);
  // bfloat16: two passes, and many ties in the k-th key at this size.
  const testing::RadixTrace narrow = trace_of<c10::BFloat16>(x.to(at::kBFloat16), n / 100);
  EXPECT_EQ(narrow.passes_run, 2);
  EXPECT_EQ(narrow.decided, 15);
}

// The hint (kernels/topk_hint.h): the same next hint and fell-back flag as the CPU reference, the
// same selection, and the one-read path taken once the hint is primed.
TEST(TopkRadixEmulation, HintMatchesCpuReference) {
  const int64_t n = (1 << 20) + 3, k = 10486;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    at::Tensor base = make_input(Pattern::kRandn, n, 5);
    at::Tensor hint_cpu = torch::zeros({2});
    std::vector<float> hint = {0.0f, 0.0f};
    for (int step = 0; step < 5; ++step) {
      at::Tensor x = base.clone();
      if (step == 3) x.index_put_({torch::arange(0, n, 97)}, NAN);
      if (step == 4) {  // nothing reaches the hint: fewer than k candidates
        hint_cpu.fill_(1e30f);
        hint[0] = 1e30f;
      }
      x = x.to(dtype);
      const auto [values, indices] = topk_cpu(x, k, hint_cpu);
      testing::RadixTrace trace;
      std::vector<int32_t> emulated;
      EFCOMM_DISPATCH_FLOAT_TYPES(dtype, "emulate", [&] {
        const std::vector<scalar_t> v = as_storage<scalar_t>(x);
        emulated =
            testing::emulate_topk_radix(v.data(), static_cast<const scalar_t*>(nullptr), n, k, hint.data(), &trace);
      });
      const std::vector<int32_t> want(indices.const_data_ptr<int32_t>(), indices.const_data_ptr<int32_t>() + k);
      EXPECT_EQ(emulated, want) << dtype << " step " << step;
      EXPECT_EQ(hint[0], hint_cpu[0].item<float>()) << dtype << " step " << step;
      EXPECT_EQ(hint[1], hint_cpu[1].item<float>()) << dtype << " step " << step;
      EXPECT_EQ(trace.hint_held, hint[1] == 0.0f) << dtype << " step " << step;
      if (step != 3) {
        EXPECT_EQ(trace.hint_held, step == 1 || step == 2) << dtype << " step " << step;
      }
      base = base + 0.01 * make_input(Pattern::kRandn, n, 10 + step);
    }
  }
}

#ifdef EFCOMM_WITH_CUDA
// The kernels against their emulation (and so against the CPU reference), with and without a
// hint, on the GPU.
TEST(TopkRadixCuda, KernelsMatchTheEmulation) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  setenv("EFCOMM_TOPK_SELECT", "radix2", 1);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const Pattern pattern : {Pattern::kRandn, Pattern::kAllEqual, Pattern::kCrowdedBin, Pattern::kNanAndInf}) {
      for (const int64_t n : {int64_t{1}, int64_t{769}, int64_t{(1 << 20) + 3}}) {
        const at::Tensor x = make_input(pattern, n, n).to(dtype);
        for (const int64_t k : {int64_t{1}, std::max<int64_t>(1, n / 100), n}) {
          const auto [v_cpu, i_cpu] = topk_cpu(x, k);
          at::Tensor hint = torch::zeros({2}, torch::kCUDA);
          for (int call = 0; call < 2; ++call) {  // a fresh hint, then a primed one
            const auto [v_gpu, i_gpu] = topk_cuda(x.cuda(), k, hint);
            EXPECT_TRUE(torch::equal(i_cpu, i_gpu.cpu()))
                << dtype << " " << name_of(pattern) << " n=" << n << " k=" << k;
            EXPECT_TRUE(torch::equal(v_cpu.view(at::kByte), v_gpu.cpu().view(at::kByte)));
          }
          const auto [v_plain, i_plain] = topk_cuda(x.cuda(), k);
          EXPECT_TRUE(torch::equal(i_cpu, i_plain.cpu()))
              << dtype << " " << name_of(pattern) << " n=" << n << " k=" << k;
        }
      }
    }
  }
  unsetenv("EFCOMM_TOPK_SELECT");
}
#endif

}  // namespace
}  // namespace efcomm
