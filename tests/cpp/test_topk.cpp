#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "csrc/ops.h"
#include "tests/cpp/test_helpers.h"

namespace efcomm {
namespace {

struct TopkCase {
  int64_t numel;
  int64_t k;
  at::ScalarType dtype;
};

class TopkCpuTest : public ::testing::TestWithParam<TopkCase> {};

TEST_P(TopkCpuTest, MatchesBruteForce) {
  const TopkCase c = GetParam();
  torch::manual_seed(c.numel + c.k);
  const at::Tensor x = torch::randn({c.numel}).to(c.dtype);
  const auto [values, indices] = topk_cpu(x, c.k);
  ASSERT_EQ(indices.scalar_type(), at::kInt);
  ASSERT_EQ(values.scalar_type(), c.dtype);
  const std::vector<int64_t> expected = testing::brute_force_topk(x, c.k);
  EXPECT_EQ(testing::to_vector(indices), expected);
  EXPECT_TRUE(torch::equal(values, x.index_select(0, indices.to(at::kLong))));
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, TopkCpuTest,
                         ::testing::Values(TopkCase{1, 1, at::kFloat}, TopkCase{7, 1, at::kFloat},
                                           TopkCase{7, 7, at::kHalf}, TopkCase{769, 13, at::kBFloat16},
                                           TopkCase{769, 769, at::kFloat}, TopkCase{(1 << 20) + 3, 1, at::kFloat},
                                           TopkCase{(1 << 20) + 3, 10486, at::kBFloat16},
                                           TopkCase{(1 << 20) + 3, 10486, at::kHalf}),
                         [](const ::testing::TestParamInfo<TopkCase>& info) {
                           return "numel" + std::to_string(info.param.numel) + "_k" + std::to_string(info.param.k) +
                                  "_" + c10::toString(info.param.dtype);
                         });

TEST(TopkCpu, TiesResolveToLowerIndex) {
  const at::Tensor x = torch::tensor({1.0f, -2.0f, 2.0f, 0.5f, -2.0f, 2.0f});
  const auto [values, indices] = topk_cpu(x, 3);
  EXPECT_EQ(testing::to_vector(indices), (std::vector<int64_t>{1, 2, 4}));
  EXPECT_TRUE(torch::equal(values, torch::tensor({-2.0f, 2.0f, -2.0f})));
}

TEST(TopkCpu, NanRanksAboveInfinity) {
  const at::Tensor x = torch::tensor({1.0f, INFINITY, NAN, -INFINITY, 3.0f});
  const auto [values, indices] = topk_cpu(x, 2);
  EXPECT_EQ(testing::to_vector(indices), (std::vector<int64_t>{1, 2}));
}

TEST(TopkCpu, NonContiguousInput) {
  torch::manual_seed(3);
  const at::Tensor base = torch::randn({40, 30});
  const at::Tensor x = base.t();  // a transposed view
  ASSERT_FALSE(x.is_contiguous());
  const auto [values, indices] = topk_cpu(x, 17);
  EXPECT_EQ(testing::to_vector(indices), testing::brute_force_topk(x.contiguous(), 17));
}

TEST(TopkCuda, MatchesCpuReference) {
#ifdef EFCOMM_WITH_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const int64_t numel : {int64_t{1}, int64_t{769}, int64_t{(1 << 20) + 3}}) {
      const at::Tensor x = torch::randn({numel}).to(dtype);
      const int64_t k = std::max<int64_t>(1, numel / 100);
      const auto [v_cpu, i_cpu] = topk_cpu(x, k);
      const auto [v_gpu, i_gpu] = topk_cuda(x.cuda(), k);
      EXPECT_TRUE(torch::equal(i_cpu, i_gpu.cpu())) << dtype << " numel=" << numel;
      EXPECT_TRUE(torch::equal(v_cpu, v_gpu.cpu())) << dtype << " numel=" << numel;
      EXPECT_TRUE(torch::equal(topk_encode_cpu(x, std::nullopt, k), topk_encode_cuda(x.cuda(), std::nullopt, k).cpu()));
    }
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

// Threshold Top-k (kernels/topk_hint.h): the hint never changes the selection; the op
// rewrites it as 0.95 times the k-th largest magnitude and flags a fallback.
TEST(TopkCpu, ThresholdHintKeepsSelectionExactAndTracksKthMagnitude) {
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({4000});
  const int64_t k = 40;
  at::Tensor hint = torch::zeros({2});
  const auto [v0, i0] = topk_cpu(x, k);
  const auto [v1, i1] = topk_cpu(x, k, hint);
  EXPECT_TRUE(torch::equal(i0, i1));
  const float kth = v0.abs().min().item<float>();
  EXPECT_EQ(hint[0].item<float>(), 0.95f * kth);
  EXPECT_EQ(hint[1].item<float>(), 1.0f);  // no hint yet: 4000 candidates > 4k
  const auto [v2, i2] = topk_cpu(x, k, hint);
  EXPECT_TRUE(torch::equal(i0, i2));
  EXPECT_EQ(hint[1].item<float>(), 0.0f);  // between k and 4k reach 0.95 * kth
  EXPECT_THROW(topk_cpu(x, k, torch::zeros({3})), c10::Error);
}

TEST(TopkCuda, ThresholdPathMatchesCpuReference) {
#ifdef EFCOMM_WITH_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(4);
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const int64_t numel = (1 << 20) + 3, k = 10486;
    at::Tensor g = torch::randn({numel}).to(dtype);
    at::Tensor h_cpu = torch::randn({numel}).to(dtype);
    at::Tensor h_gpu = h_cpu.cuda();
    at::Tensor hint_cpu = torch::zeros({2});
    at::Tensor hint_gpu = hint_cpu.cuda();
    for (int step = 0; step < 4; ++step) {  // step 0 falls back; then the one-pass path
      const at::Tensor m_cpu = topk_encode_cpu(g, h_cpu, k, 1.0, hint_cpu);
      const at::Tensor m_gpu = topk_encode_cuda(g.cuda(), h_gpu, k, 1.0, hint_gpu);
      EXPECT_TRUE(torch::equal(m_cpu, m_gpu.cpu())) << dtype << " step " << step;
      EXPECT_TRUE(torch::equal(h_cpu, h_gpu.cpu())) << dtype << " step " << step;
      EXPECT_TRUE(torch::equal(hint_cpu, hint_gpu.cpu())) << dtype << " step " << step;
      g = g + 0.01 * torch::randn({numel}).to(dtype);
    }
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
}  // namespace efcomm
