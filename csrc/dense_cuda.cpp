// CUDA implementation of the dense family (the contract: csrc/ops.h): checks and device guard
// here, the kernels in kernels/dense_message.cu. Clip21's norm is reduced in double by ATen in
// the GPU's order: the clip factor can differ from the CPU reference's in its last bits (the one
// encode that is not bit-exact; tested with a tolerance).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/dense_message.cuh"

namespace efcomm {

at::Tensor dense_encode_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b, std::optional<double> clip,
                             double scale) {
  check_dense_encode_args(a, b, clip, scale);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.numel();
  const at::Tensor flat = a.contiguous().view({-1});
  const std::optional<at::Tensor> state = b.has_value() ? std::optional<at::Tensor>(b->view({-1})) : std::nullopt;
  // Clipped: d = T(a - b) formed first for its norm; factor = clip / ||d|| where ||d|| > clip, else
  // 1 (a NaN norm leaves d unclipped, as on the CPU), as one float on the device.
  at::Tensor source = flat;
  std::optional<at::Tensor> factor;
  if (clip.has_value()) {
    if (state) source = at::sub(flat, *state);
    const at::Tensor norm = at::linalg_vector_norm(source, 2, std::nullopt, false, at::kDouble);
    const at::Tensor ratio = at::full({}, *clip, norm.options()).div(norm);
    factor = at::where(norm.gt(*clip), ratio, at::ones_like(ratio)).to(at::kFloat);
  }
  at::Tensor message = at::zeros({dense_layout_of(n, a.scalar_type()).nbytes}, a.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "dense_encode_cuda", [&] {
    using T = typename KernelType<scalar_t>::type;
    T* update = state ? kernel_ptr(state->mutable_data_ptr<scalar_t>()) : nullptr;
    kernels::dense_encode(kernel_ptr(source.const_data_ptr<scalar_t>()), clip.has_value() ? nullptr : update, update, n,
                          factor ? factor->const_data_ptr<float>() : nullptr, own_message_rule(scale),
                          kernel_ptr(reinterpret_cast<scalar_t*>(message.mutable_data_ptr<uint8_t>())),
                          at::cuda::getCurrentCUDAStream());
  });
  return message;
}

void dense_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, double scale,
                           const std::optional<at::Tensor>& weights) {
  const wire::DenseLayout layout = check_dense_decode_args(h, gathered, scale, weights);
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t rows = gathered.size(0);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "dense_decode_add_cuda", [&] {
    kernels::values_decode_add(kernel_ptr(h.mutable_data_ptr<scalar_t>()), nullptr, layout.count,
                               gathered.const_data_ptr<uint8_t>(), rows, layout.nbytes, rule,
                               at::cuda::getCurrentCUDAStream());
  });
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("dense_encode_", &dense_encode_cuda);
  m.impl("dense_decode_add_", &dense_decode_add_cuda);
}

}  // namespace efcomm
