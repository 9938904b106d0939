// CPU reference of the quantizer family (the contract: csrc/ops.h; the schemes:
// kernels/quant_schemes.h): plain loops over blocks and entries, templated on the scheme's codec.
// The CUDA kernels (kernels/quantize.cu) are checked against it, bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "csrc/checks.h"
#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/counter_rng.h"
#include "kernels/decode_rule.h"
#include "kernels/quant_schemes.h"

namespace efcomm {
namespace {

// d_i: a_i, or T(a_i - b_i).
template <typename T>
float difference(const T* a, const T* b, int64_t i) {
  return b != nullptr ? load(store<T>(load(a[i]) - load(b[i]))) : load(a[i]);
}

// Writes the message of d into `message` (zeroed); with b, b_i += the value of d_i's code.
template <typename Codec, typename T>
void quantize_blocks(const T* a, T* b, const QuantConfig& config, bool stochastic, uint64_t seed, uint64_t stream,
                     double scale, uint8_t* message) {
  const wire::QuantLayout& layout = config.layout;
  const DecodeRule own = own_message_rule(scale);
  for (int64_t block = 0; block < layout.nblocks; ++block) {
    const int64_t start = block * layout.block;
    const int64_t len = std::min(layout.block, layout.numel - start);
    // The block statistic in the canonical order: per lane in index order, then the tree.
    float lanes[quant::kLanes];
    std::fill(lanes, lanes + quant::kLanes, quant::stat_identity<Codec::kStatistic>());
    for (int64_t e = 0; e < len; ++e) {
      const int lane = quant::lane_of(e);
      const float term = quant::stat_term<Codec::kStatistic>(difference(a, b, start + e));
      lanes[lane] = quant::stat_combine<Codec::kStatistic>(lanes[lane], term);
    }
    for (int offset = quant::kLanes / 2; offset > 0; offset /= 2) {
      for (int t = 0; t < offset; ++t) lanes[t] = quant::stat_combine<Codec::kStatistic>(lanes[t], lanes[t + offset]);
    }
    const uint32_t header = Codec::header(lanes[0], len);
    wire::write_header(message, block, header);
    for (int64_t i = start; i < start + len; ++i) {
      const float u = stochastic ? rng::to_unit_float(rng::draw(seed, stream, i)) : 0.0f;
      const uint32_t code = Codec::encode(header, difference(a, b, i), u, stochastic, config.levels);
      wire::write_code(message, layout, i, code);
      if (b != nullptr) b[i] = add_decoded(b[i], own.single(Codec::decode(header, code, config.levels)));
    }
  }
}

}  // namespace

at::Tensor quant_encode_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b, c10::string_view scheme,
                            int64_t levels, int64_t block, bool stochastic, int64_t seed, int64_t step, int64_t bucket,
                            int64_t rank, double scale) {
  const QuantConfig config = check_quant_encode_args(a, b, scheme, levels, block, stochastic, step, rank, scale);
  const at::Tensor ac = a.contiguous();
  at::Tensor message = at::zeros({config.layout.nbytes}, a.options().dtype(at::kByte));
  quant::with_codec(config.scheme, [&](auto codec) {
    using Codec = decltype(codec);
    EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "quant_encode_cpu", [&] {
      quantize_blocks<Codec>(ac.const_data_ptr<scalar_t>(), b ? b->mutable_data_ptr<scalar_t>() : nullptr, config,
                             stochastic, static_cast<uint64_t>(seed), rng::rounding_stream(step, bucket, rank), scale,
                             message.mutable_data_ptr<uint8_t>());
    });
  });
  return message;
}

void quant_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme, int64_t levels,
                          int64_t block, double scale, const std::optional<at::Tensor>& weights) {
  const QuantConfig config = check_quant_decode_args(h, gathered, scheme, levels, block, scale, weights);
  const int64_t rows = gathered.size(0);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  quant::with_codec(config.scheme, [&](auto codec) {
    using Codec = decltype(codec);
    const quant::QuantRows<Codec> reader{gathered.const_data_ptr<uint8_t>(), config.layout, config.levels};
    EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "quant_decode_add_cpu", [&] {
      scalar_t* hp = h.mutable_data_ptr<scalar_t>();
      for (int64_t i = 0; i < config.layout.numel; ++i) decode_position(hp, reader, i, rows, rule);
    });
  });
}

TORCH_LIBRARY_IMPL(efcomm, CPU, m) {
  m.impl("quant_encode_", &quant_encode_cpu);
  m.impl("quant_decode_add_", &quant_decode_add_cpu);
}

}  // namespace efcomm
