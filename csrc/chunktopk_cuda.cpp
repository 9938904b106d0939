// CUDA implementation of the chunked Top-k family (the contract: csrc/ops.h; the rule:
// kernels/chunk_topk_rule.h): checks and device guard here, the kernels in kernels/chunk_topk.cu.
// No host read: one launch per op.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/chunk_topk.cuh"

namespace efcomm {

at::Tensor chunktopk_encode_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t chunk,
                                 int64_t bits, double scale) {
  const wire::ChunkTopkLayout layout = check_chunktopk_encode_args(a, b, k, chunk, bits, scale);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor ac = a.contiguous();
  at::Tensor message = at::empty({layout.nbytes}, a.options().dtype(at::kByte));  // every byte written
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "chunktopk_encode_cuda", [&] {
    kernels::chunk_topk_encode(kernel_ptr(ac.const_data_ptr<scalar_t>()),
                               b.has_value() ? kernel_ptr(b->mutable_data_ptr<scalar_t>()) : nullptr, layout,
                               own_message_rule(scale), message.mutable_data_ptr<uint8_t>(),
                               at::cuda::getCurrentCUDAStream());
  });
  return message;
}

void chunktopk_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t chunk, int64_t bits,
                               double scale, const std::optional<at::Tensor>& weights) {
  const wire::ChunkTopkLayout layout = check_chunktopk_decode_args(h, gathered, k, chunk, bits, scale, weights);
  const c10::cuda::CUDAGuard guard(h.device());
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, gathered.size(0), scale);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "chunktopk_decode_add_cuda", [&] {
    kernels::chunk_topk_decode_add(kernel_ptr(h.mutable_data_ptr<scalar_t>()), gathered.const_data_ptr<uint8_t>(),
                                   gathered.size(0), layout, rule, at::cuda::getCurrentCUDAStream());
  });
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("chunktopk_encode_", &chunktopk_encode_cuda);
  m.impl("chunktopk_decode_add_", &chunktopk_decode_add_cuda);
}

}  // namespace efcomm
