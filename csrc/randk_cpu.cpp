// CPU reference of the Rand-k family (the contract: csrc/ops.h; which entries:
// kernels/randk_rule.h): plain loops. The CUDA implementation (csrc/randk_cuda.cpp) is checked
// against it, bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "csrc/checks.h"
#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "csrc/sparse_message.h"
#include "kernels/counter_rng.h"
#include "kernels/decode_rule.h"
#include "kernels/randk_rule.h"

namespace efcomm {
namespace {

// The k indices in message order: ascending, except a window of shared indices, which runs
// from its offset and wraps around.
std::vector<int64_t> randk_select(int64_t n, int64_t k, int64_t seed, int64_t step, int64_t bucket, bool window,
                                  std::optional<int64_t> rank) {
  const uint64_t stream = rng::randk_stream(step, bucket, rank.value_or(-1));
  std::vector<int64_t> selected(k);
  if (window) {
    const auto offset = static_cast<int64_t>(randk::window_offset(static_cast<uint64_t>(seed), stream, n));
    for (int64_t t = 0; t < k; ++t) selected[t] = randk::window_index(offset, n, k, t, rank.has_value());
    return selected;
  }
  const randk::Permutation pi = randk::permutation(static_cast<uint64_t>(seed), stream, n);
  for (int64_t t = 0; t < k; ++t) selected[t] = pi(static_cast<uint32_t>(t));
  std::sort(selected.begin(), selected.end());
  return selected;
}

}  // namespace

at::Tensor randk_indices_cpu(const at::Tensor& x, int64_t k, int64_t seed, int64_t step, int64_t bucket, bool window,
                             std::optional<int64_t> rank) {
  check_randk_args(x, k, step, rank, "randk_indices");
  return at::tensor(randk_select(x.numel(), k, seed, step, bucket, window, rank), x.options().dtype(at::kLong));
}

at::Tensor randk_encode_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t seed,
                            int64_t step, int64_t bucket, bool window, double scale, std::optional<int64_t> rank) {
  check_randk_encode_args(a, b, k, step, scale, rank);
  const std::vector<int64_t> selected = randk_select(a.numel(), k, seed, step, bucket, window, rank);
  return gather_message_cpu(a.contiguous(), b, selected, scale, /*with_indices=*/rank.has_value());
}

void randk_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t seed, int64_t step,
                          int64_t bucket, bool window, double scale, const std::optional<at::Tensor>& weights) {
  const wire::DenseLayout layout = check_randk_decode_args(h, gathered, k, step, scale, weights);
  const std::vector<int64_t> selected = randk_select(h.numel(), k, seed, step, bucket, window, std::nullopt);
  const int64_t rows = gathered.size(0);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "randk_decode_add_cpu", [&] {
    const ValueRows<scalar_t, int64_t> reader{gathered.const_data_ptr<uint8_t>(), layout.nbytes, selected.data()};
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    for (int64_t t = 0; t < k; ++t) decode_position(hp, reader, t, rows, rule);
  });
}

TORCH_LIBRARY_IMPL(efcomm, CPU, m) {
  m.impl("randk_indices", &randk_indices_cpu);
  m.impl("randk_encode_", &randk_encode_cpu);
  m.impl("randk_decode_add_", &randk_decode_add_cpu);
}

}  // namespace efcomm
