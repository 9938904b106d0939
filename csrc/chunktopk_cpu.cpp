// CPU reference of the chunked Top-k family (the contract: csrc/ops.h; the rule:
// kernels/chunk_topk_rule.h; the layout: kernels/wire_layout.h): plain loops over chunks, written
// to be read. The CUDA implementation (kernels/chunk_topk.cu) is checked against it, bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "csrc/checks.h"
#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/chunk_topk_rule.h"
#include "kernels/decode_rule.h"

namespace efcomm {
namespace {

// The offsets of the k_c entries of d[0..len) that rank first (larger magnitude, NaN above
// everything, the lower offset among equals), ascending.
std::vector<int64_t> select_in_chunk(const std::vector<float>& d, int64_t kept) {
  std::vector<int64_t> order(d.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return chunk_topk::magnitude_key(d[x]) > chunk_topk::magnitude_key(d[y]);
  });
  order.resize(kept);
  std::sort(order.begin(), order.end());
  return order;
}

template <typename T>
void encode_chunks(const T* a, T* b, const wire::ChunkTopkLayout& layout, double scale, uint8_t* message) {
  const DecodeRule own = own_message_rule(scale);
  for (int64_t c = 0; c < layout.chunks; ++c) {
    const int64_t start = c * layout.chunk;
    const int64_t len = layout.length(c);
    std::vector<float> d(len);  // d = T(a - b) or a, as float
    for (int64_t e = 0; e < len; ++e) {
      const int64_t i = start + e;
      d[e] = load(store<T>(b != nullptr ? load(a[i]) - load(b[i]) : load(a[i])));
    }
    const std::vector<int64_t> kept = select_in_chunk(d, layout.kept(c));
    // The scale: the largest kept magnitude (NaN when any kept entry is NaN).
    uint32_t top_key = 0;
    for (const int64_t e : kept) top_key = std::max(top_key, chunk_topk::magnitude_key(d[e]));
    wire::write_header(message, c, float_field(chunk_topk::magnitude_of_key(top_key)));
    const float s = chunk_topk::scale_of(message, c);
    auto* words = reinterpret_cast<uint32_t*>(message + layout.region_offset(c));
    for (size_t t = 0; t < kept.size(); ++t) {
      const int64_t e = kept[t];
      const uint32_t q = chunk_topk::encode(d[e], s, layout.bits);
      wire::write_field(words, static_cast<int64_t>(t), layout.field_bits, chunk_topk::field_of(e, q, layout));
      if (b != nullptr) b[start + e] = add_decoded(b[start + e], own.single(chunk_topk::decode(s, q, layout.bits)));
    }
  }
}

}  // namespace

at::Tensor chunktopk_encode_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t chunk,
                                int64_t bits, double scale) {
  const wire::ChunkTopkLayout layout = check_chunktopk_encode_args(a, b, k, chunk, bits, scale);
  const at::Tensor ac = a.contiguous();
  at::Tensor message = at::zeros({layout.nbytes}, a.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "chunktopk_encode_cpu", [&] {
    encode_chunks(ac.const_data_ptr<scalar_t>(), b ? b->mutable_data_ptr<scalar_t>() : nullptr, layout, scale,
                  message.mutable_data_ptr<uint8_t>());
  });
  return message;
}

void chunktopk_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t chunk, int64_t bits,
                              double scale, const std::optional<at::Tensor>& weights) {
  const char* op = "chunktopk_decode_add_";
  const wire::ChunkTopkLayout layout = check_chunktopk_decode_args(h, gathered, k, chunk, bits, scale, weights);
  const int64_t rows = gathered.size(0);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  const uint8_t* base = gathered.const_data_ptr<uint8_t>();
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "chunktopk_decode_add_cpu", [&] {
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < layout.chunks; ++c) {
      const int64_t start = c * layout.chunk;
      const int64_t len = layout.length(c);
      std::vector<float> acc(len, 0.0f);
      std::vector<bool> carried(len, false);  // entries no message carries stay as they are
      for (int64_t j = 0; j < rows; ++j) {    // rank order: the same sum on every rank
        const uint8_t* row = base + j * layout.nbytes;
        const float s = chunk_topk::scale_of(row, c);
        const uint32_t* words = chunk_topk::region_of(row, layout, c);
        int64_t previous = -1;
        for (int64_t t = 0; t < layout.kept(c); ++t) {
          const uint32_t field = wire::read_field(words, t, layout.field_bits);
          const int64_t e = chunk_topk::offset_of(field, layout);
          TORCH_CHECK(e < len && e > previous, op, ": message of rank ", j, " holds offset ", e, " in chunk ", c,
                      " (of ", len, " entries) after offset ", previous,
                      "; offsets must ascend within the chunk's length");
          previous = e;
          const float v = chunk_topk::decode(s, chunk_topk::code_of(field, layout), layout.bits);
          acc[e] = rule.add(acc[e], j, v);
          carried[e] = true;
        }
      }
      for (int64_t e = 0; e < len; ++e) {
        if (carried[e]) hp[start + e] = add_decoded(hp[start + e], rule.finish(acc[e]));
      }
    }
  });
}

TORCH_LIBRARY_IMPL(efcomm, CPU, m) {
  m.impl("chunktopk_encode_", &chunktopk_encode_cpu);
  m.impl("chunktopk_decode_add_", &chunktopk_decode_add_cpu);
}

}  // namespace efcomm
