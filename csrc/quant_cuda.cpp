// CUDA implementation of the quantizer family (the contract: csrc/ops.h; the schemes:
// kernels/quant_schemes.h): checks and device guard here, the kernels (templated on the scheme's
// codec) in kernels/quantize.cu.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/counter_rng.h"
#include "kernels/quant_schemes.h"
#include "kernels/quantize.cuh"

namespace efcomm {

at::Tensor quant_encode_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b, c10::string_view scheme,
                             int64_t levels, int64_t block, bool stochastic, int64_t seed, int64_t step, int64_t bucket,
                             int64_t rank, double scale) {
  const QuantConfig config = check_quant_encode_args(a, b, scheme, levels, block, stochastic, step, rank, scale);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor ac = a.contiguous();
  at::Tensor message = at::empty({config.layout.nbytes}, a.options().dtype(at::kByte));  // every byte written
  quant::with_codec(config.scheme, [&](auto codec) {
    using Codec = decltype(codec);
    EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "quant_encode_cuda", [&] {
      using T = typename KernelType<scalar_t>::type;
      T* state = b.has_value() ? kernel_ptr(b->mutable_data_ptr<scalar_t>()) : nullptr;
      kernels::quantize<T, Codec>(kernel_ptr(ac.const_data_ptr<scalar_t>()), state, config.layout, config.levels,
                                  stochastic, static_cast<uint64_t>(seed), rng::rounding_stream(step, bucket, rank),
                                  own_message_rule(scale), message.mutable_data_ptr<uint8_t>(),
                                  at::cuda::getCurrentCUDAStream());
    });
  });
  return message;
}

void quant_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme, int64_t levels,
                           int64_t block, double scale, const std::optional<at::Tensor>& weights) {
  const QuantConfig config = check_quant_decode_args(h, gathered, scheme, levels, block, scale, weights);
  const c10::cuda::CUDAGuard guard(h.device());
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, gathered.size(0), scale);
  quant::with_codec(config.scheme, [&](auto codec) {
    using Codec = decltype(codec);
    EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "quant_decode_add_cuda", [&] {
      using T = typename KernelType<scalar_t>::type;
      kernels::quant_decode_add<T, Codec>(kernel_ptr(h.mutable_data_ptr<scalar_t>()),
                                          gathered.const_data_ptr<uint8_t>(), gathered.size(0), config.layout,
                                          config.levels, rule, at::cuda::getCurrentCUDAStream());
    });
  });
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("quant_encode_", &quant_encode_cuda);
  m.impl("quant_decode_add_", &quant_decode_add_cuda);
}

}  // namespace efcomm
