// CUDA implementation of the Rand-k family (the contract: csrc/ops.h; which entries:
// kernels/randk_rule.h): checks and device guard here; the indices from k threads and a sort of k
// keys (kernels/randk.cu), the message and the state update by the sparse gather
// (kernels/sparse_message.cu), the decode by the rows-of-values decode (kernels/dense_message.cu).
// No host read.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/counter_rng.h"
#include "kernels/dense_message.cuh"
#include "kernels/randk.cuh"
#include "kernels/sparse_message.cuh"

namespace efcomm {
namespace {

// The k indices (int32 on x's device) in message order: ascending, except a window of shared
// indices, which runs from its offset and wraps around.
at::Tensor randk_select(const at::Tensor& x, int64_t k, int64_t seed, int64_t step, int64_t bucket, bool window,
                        std::optional<int64_t> rank) {
  const int64_t n = x.numel();
  const uint64_t stream = rng::randk_stream(step, bucket, rank.value_or(-1));
  const cudaStream_t cuda_stream = at::cuda::getCurrentCUDAStream();
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kInt));
  if (window) {
    const auto offset = static_cast<int64_t>(randk::window_offset(static_cast<uint64_t>(seed), stream, n));
    kernels::randk_window_indices(offset, n, k, rank.has_value(), indices.mutable_data_ptr<int32_t>(), cuda_stream);
    return indices;
  }
  const size_t bytes = kernels::randk_uniform_workspace(k);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  kernels::randk_uniform_indices(randk::permutation(static_cast<uint64_t>(seed), stream, n), k,
                                 indices.mutable_data_ptr<int32_t>(), workspace.mutable_data_ptr(), bytes, cuda_stream);
  return indices;
}

}  // namespace

at::Tensor randk_indices_cuda(const at::Tensor& x, int64_t k, int64_t seed, int64_t step, int64_t bucket, bool window,
                              std::optional<int64_t> rank) {
  check_randk_args(x, k, step, rank, "randk_indices");
  const c10::cuda::CUDAGuard guard(x.device());
  return randk_select(x, k, seed, step, bucket, window, rank).to(at::kLong);
}

at::Tensor randk_encode_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t seed,
                             int64_t step, int64_t bucket, bool window, double scale, std::optional<int64_t> rank) {
  check_randk_encode_args(a, b, k, step, scale, rank);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor selected = randk_select(a, k, seed, step, bucket, window, rank);
  const wire::SparseLayout sparse = sparse_layout_of(k, a.scalar_type());
  const int64_t nbytes = rank.has_value() ? sparse.nbytes : dense_layout_of(k, a.scalar_type()).nbytes;
  at::Tensor message = at::zeros({nbytes}, a.options().dtype(at::kByte));
  const at::Tensor flat = a.contiguous().view({-1});
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "randk_encode_cuda", [&] {
    uint8_t* bytes = message.mutable_data_ptr<uint8_t>();
    kernels::gather_message(kernel_ptr(flat.const_data_ptr<scalar_t>()),
                            b.has_value() ? kernel_ptr(b->mutable_data_ptr<scalar_t>()) : nullptr,
                            selected.const_data_ptr<int32_t>(), k, own_message_rule(scale),
                            kernel_ptr(reinterpret_cast<scalar_t*>(bytes)),
                            rank.has_value() ? reinterpret_cast<int32_t*>(bytes + sparse.indices_offset) : nullptr,
                            at::cuda::getCurrentCUDAStream());
  });
  return message;
}

void randk_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t seed, int64_t step,
                           int64_t bucket, bool window, double scale, const std::optional<at::Tensor>& weights) {
  const wire::DenseLayout layout = check_randk_decode_args(h, gathered, k, step, scale, weights);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor selected = randk_select(h, k, seed, step, bucket, window, std::nullopt);
  const int64_t rows = gathered.size(0);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "randk_decode_add_cuda", [&] {
    kernels::values_decode_add(kernel_ptr(h.mutable_data_ptr<scalar_t>()), selected.const_data_ptr<int32_t>(), k,
                               gathered.const_data_ptr<uint8_t>(), rows, layout.nbytes, rule,
                               at::cuda::getCurrentCUDAStream());
  });
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("randk_indices", &randk_indices_cuda);
  m.impl("randk_encode_", &randk_encode_cuda);
  m.impl("randk_decode_add_", &randk_decode_add_cuda);
}

}  // namespace efcomm
