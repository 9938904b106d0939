// CPU reference of the dense family (the contract: csrc/ops.h): plain loops. The CUDA
// implementation (csrc/dense_cuda.cpp) is checked against it: bit for bit, except the clip
// factor's last bits (its norm is summed in another order there).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "csrc/checks.h"
#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/decode_rule.h"

namespace efcomm {

at::Tensor dense_encode_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b, std::optional<double> clip,
                            double scale) {
  check_dense_encode_args(a, b, clip, scale);
  const int64_t n = a.numel();
  const at::Tensor ac = a.contiguous();
  at::Tensor message = at::zeros({dense_layout_of(n, a.scalar_type()).nbytes}, a.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "dense_encode_cpu", [&] {
    const scalar_t* ap = ac.const_data_ptr<scalar_t>();
    scalar_t* bp = b.has_value() ? b->mutable_data_ptr<scalar_t>() : nullptr;
    auto* c = reinterpret_cast<scalar_t*>(message.mutable_data_ptr<uint8_t>());
    for (int64_t i = 0; i < n; ++i) c[i] = store<scalar_t>(bp != nullptr ? load(ap[i]) - load(bp[i]) : load(ap[i]));
    if (clip.has_value()) {  // c = (clip / ||d||) d when ||d|| > clip, ||d|| summed in double in index order
      double squares = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double v = load(c[i]);
        squares += v * v;
      }
      const double norm = std::sqrt(squares);
      if (norm > *clip) {
        const auto factor = static_cast<float>(*clip / norm);
        for (int64_t i = 0; i < n; ++i) c[i] = store<scalar_t>(load(c[i]) * factor);
      }
    }
    if (bp != nullptr) {
      const DecodeRule own = own_message_rule(scale);
      for (int64_t i = 0; i < n; ++i) bp[i] = add_decoded(bp[i], own.single(load(c[i])));
    }
  });
  return message;
}

void dense_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, double scale,
                          const std::optional<at::Tensor>& weights) {
  const wire::DenseLayout layout = check_dense_decode_args(h, gathered, scale, weights);
  const int64_t rows = gathered.size(0);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "dense_decode_add_cpu", [&] {
    const ValueRows<scalar_t, int64_t> reader{gathered.const_data_ptr<uint8_t>(), layout.nbytes, nullptr};
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < layout.count; ++i) decode_position(hp, reader, i, rows, rule);
  });
}

TORCH_LIBRARY_IMPL(efcomm, CPU, m) {
  m.impl("dense_encode_", &dense_encode_cpu);
  m.impl("dense_decode_add_", &dense_decode_add_cpu);
}

}  // namespace efcomm
