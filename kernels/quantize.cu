#include "kernels/quantize.cuh"

#include <algorithm>

#include "kernels/counter_rng.h"
#include "kernels/decode_positions.cuh"
#include "kernels/launch.cuh"
#include "kernels/quant_schemes.h"

namespace efcomm::kernels {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int64_t kChunk = 4 * quant::kLanes;  // entries a warp covers per sweep

// How many warps (quantizer blocks) share a CTA: the codes of each block are staged in
// shared memory, `block` bytes per warp, at most 8 KiB per CTA.
int warps_per_cta(int64_t block) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(4, 8192 / block))); }

// d_i: x_i, or T(x_i - sub_i).
template <typename T>
__device__ __forceinline__ float source(const T* x, const T* sub, int64_t i) {
  if (sub == nullptr) return load(x[i]);
  return load(store<T>(load(x[i]) - load(sub[i])));
}

template <typename T, typename Codec>
__global__ void quantize_kernel(const T* __restrict__ x, const T* sub, T* update, wire::QuantLayout layout,
                                int32_t levels, bool stochastic, uint64_t seed, uint64_t stream_id, DecodeRule own,
                                int warps, uint8_t* __restrict__ message) {
  constexpr quant::Statistic S = Codec::kStatistic;
  extern __shared__ uint8_t staged[];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * warps + warp;
  if (b >= layout.nblocks) return;  // the whole warp leaves together
  uint8_t* codes = staged + warp * layout.block;
  const int64_t start = b * layout.block;
  const int64_t len = min(layout.block, layout.numel - start);

  // The block statistic: each lane in index order, then the tree of kernels/quant_block.h.
  float stat = quant::stat_identity<S>();
  for (int64_t c = 0; c < layout.block; c += kChunk) {
    for (int q = 0; q < 4; ++q) {
      const int64_t e = c + 4 * lane + q;
      if (e < len) stat = quant::stat_combine<S>(stat, quant::stat_term<S>(source(x, sub, start + e)));
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_down_sync(kFullMask, stat, offset);
    stat = quant::stat_combine<S>(stat, other);
  }
  stat = __shfl_sync(kFullMask, stat, 0);
  const uint32_t header = Codec::header(stat, len);
  if (lane == 0) wire::write_header(message, b, header);

  // Codes, staged one byte per entry (zero past the end of the tensor).
  for (int64_t c = 0; c < layout.block; c += kChunk) {
    const int64_t e0 = c + 4 * lane;
    rng::Block draws{{0, 0, 0, 0}};
    if (stochastic && e0 < len) draws = rng::draws4(seed, stream_id, (start + e0) / 4);
    for (int q = 0; q < 4; ++q) {
      const int64_t e = e0 + q;
      if (e >= layout.block) continue;
      if (e >= len) {
        codes[e] = 0;
        continue;
      }
      const uint32_t code = Codec::encode(header, source(x, sub, start + e), rng::to_unit_float(draws.w[q]),
                                          stochastic, levels);
      codes[e] = static_cast<uint8_t>(code);
      if (update != nullptr) {  // after the source was read: update may alias sub
        update[start + e] = add_decoded(update[start + e], own.single(Codec::decode(header, code, levels)));
      }
    }
  }
  __syncwarp();

  // Pack: word w of the block holds bits [32 w, 32 w + 32) of the code stream.
  auto* out = reinterpret_cast<uint32_t*>(message + layout.codes_offset) + b * layout.words_per_block;
  for (int64_t w = lane; w < layout.words_per_block; w += 32) {
    const int64_t first_bit = 32 * w;
    uint32_t word = 0;
    for (int64_t e = first_bit / layout.bits; e < layout.block && e * layout.bits < first_bit + 32; ++e) {
      const int64_t shift = e * layout.bits - first_bit;
      const uint32_t code = codes[e];
      word |= shift >= 0 ? code << shift : code >> (-shift);
    }
    out[w] = word;
  }
}

}  // namespace

template <typename T, typename Codec>
void quantize(const T* x, const T* sub, T* update, const wire::QuantLayout& layout, int32_t levels, bool stochastic,
              uint64_t seed, uint64_t stream_id, DecodeRule own, uint8_t* message, cudaStream_t stream) {
  const int warps = warps_per_cta(layout.block);
  const int64_t ctas = (layout.nblocks + warps - 1) / warps;
  const size_t shared = static_cast<size_t>(warps) * static_cast<size_t>(layout.block);
  quantize_kernel<T, Codec><<<static_cast<unsigned int>(ctas), 32 * warps, shared, stream>>>(
      x, sub, update, layout, levels, stochastic, seed, stream_id, own, warps, message);
  check_launch("quantize");
}

template <typename T, typename Codec>
void quant_decode_add(T* h, const uint8_t* gathered, int64_t rows, const wire::QuantLayout& layout, int32_t levels,
                      DecodeRule rule, cudaStream_t stream) {
  decode_positions(h, quant::QuantRows<Codec>{gathered, layout, levels}, layout.numel, rows, rule, stream,
                   "quant_decode_add");
}

#define EFCOMM_INSTANTIATE(T, Codec)                                                                           \
  template void quantize<T, Codec>(const T*, const T*, T*, const wire::QuantLayout&, int32_t, bool, uint64_t,   \
                                   uint64_t, DecodeRule, uint8_t*, cudaStream_t);                               \
  template void quant_decode_add<T, Codec>(T*, const uint8_t*, int64_t, const wire::QuantLayout&, int32_t,      \
                                           DecodeRule, cudaStream_t);
#define EFCOMM_INSTANTIATE_SCHEME(Codec) \
  EFCOMM_INSTANTIATE(float, Codec)       \
  EFCOMM_INSTANTIATE(__half, Codec)      \
  EFCOMM_INSTANTIATE(__nv_bfloat16, Codec)

EFCOMM_QUANT_SCHEMES(EFCOMM_INSTANTIATE_SCHEME)
#undef EFCOMM_INSTANTIATE_SCHEME
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
