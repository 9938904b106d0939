#include "kernels/quantize.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/counter_rng.h"
#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"
#include "kernels/quant_pack.h"
#include "kernels/quant_schemes.h"
#include "kernels/vector_access.cuh"

namespace efcomm::kernels {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int64_t kChunk = 4 * quant::kLanes;  // entries a warp covers per sweep: 4 per lane
constexpr int kWarpsPerCta = kThreads / 32;

// A lane's four entries of the sweep that starts at entry c of the block: the first, how many
// are in the tensor (<= 4), d_q = x_q or T(x_q - state_q), and the state's values.
template <typename T>
struct LaneEntries {
  int64_t e0;
  int count;
  float d[4];
  T old[4];
};

template <typename T>
__device__ __forceinline__ LaneEntries<T> lane_entries(const T* x, const T* state, int64_t start, int64_t len,
                                                       int64_t c, int lane, bool vectors) {
  LaneEntries<T> r;
  r.e0 = c + 4 * lane;
  r.count = static_cast<int>(max(int64_t{0}, min(int64_t{4}, len - r.e0)));
  T xv[4];
  load4(x, start + r.e0, r.count, vectors, xv);
  if (state != nullptr) load4(state, start + r.e0, r.count, vectors, r.old);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (q < r.count) r.d[q] = state != nullptr ? load(store<T>(load(xv[q]) - load(r.old[q]))) : load(xv[q]);
  }
  return r;
}

// Word `lane` of a sweep's code region (kernels/quant_pack.h), gathered from the lanes whose
// groups cover it. Every lane calls it; lanes past the sweep's words get garbage.
__device__ __forceinline__ uint32_t pack_word(uint32_t group, int lane, int bits) {
  const int first = quant::first_lane(lane, bits);
  const int last = quant::last_lane(lane, bits);
  uint32_t word = 0;
  for (int j = 0; j < quant::lanes_per_word(bits); ++j) {
    const int l = first + j;
    const uint32_t g = __shfl_sync(kFullMask, group, l < 32 ? l : 31);
    if (l <= last && l < 32) word |= quant::word_part(g, l, lane, bits);
  }
  return word;
}

template <typename T, typename Codec>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const T* __restrict__ x, T* state, wire::QuantLayout layout, int32_t levels, bool stochastic,
                    uint64_t seed, uint64_t stream_id, DecodeRule own, bool vectors, uint8_t* __restrict__ message) {
  constexpr quant::Statistic S = Codec::kStatistic;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int bits = static_cast<int>(layout.bits);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerCta;
  auto* words = reinterpret_cast<uint32_t*>(message + layout.codes_offset);
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32; b < layout.nblocks; b += warps) {
    const int64_t start = b * layout.block;
    const int64_t len = min(layout.block, layout.numel - start);

    // The block statistic: each lane over its entries in index order, then the tree of
    // kernels/quant_block.h.
    float stat = quant::stat_identity<S>();
    for (int64_t c = 0; c < layout.block; c += kChunk) {
      const LaneEntries<T> e = lane_entries(x, state, start, len, c, lane, vectors);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (q < e.count) stat = quant::stat_combine<S>(stat, quant::stat_term<S>(e.d[q]));
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_down_sync(kFullMask, stat, offset);
      stat = quant::stat_combine<S>(stat, other);
    }
    stat = __shfl_sync(kFullMask, stat, 0);
    const uint32_t header = Codec::header(stat, len);
    if (lane == 0) wire::write_header(message, b, header);

    // The codes (zero past the end of the tensor), the state update, and the packed words. The
    // second read of the block comes from the cache.
    for (int64_t c = 0; c < layout.block; c += kChunk) {
      const LaneEntries<T> e = lane_entries(x, state, start, len, c, lane, vectors);
      rng::Block draws{{0, 0, 0, 0}};
      if (stochastic && e.count > 0) draws = rng::draws4(seed, stream_id, (start + e.e0) / 4);
      uint32_t group = 0;
      T next[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (q < e.count) {
          const uint32_t code = Codec::encode(header, e.d[q], rng::to_unit_float(draws.w[q]), stochastic, levels);
          group |= code << (q * bits);
          if (state != nullptr) next[q] = add_decoded(e.old[q], own.single(Codec::decode(header, code, levels)));
        }
      }
      if (state != nullptr) store4(state, start + e.e0, e.count, vectors, next);
      const uint32_t word = pack_word(group, lane, bits);
      const int64_t chunk_words = min(layout.block - c, kChunk) * bits / 32;
      if (lane < chunk_words) words[b * layout.words_per_block + c * bits / 32 + lane] = word;
    }
  }
}

template <typename T, typename Codec>
__global__ void __launch_bounds__(kThreads)
    quant_decode_kernel(T* h, const uint8_t* __restrict__ gathered, int64_t rows, wire::QuantLayout layout,
                        int32_t levels, DecodeRule rule, bool vectors) {
  const int bits = static_cast<int>(layout.bits);
  const int64_t groups = (layout.numel + 3) / 4;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i0 = 4 * g;
    const int count = static_cast<int>(min(int64_t{4}, layout.numel - i0));
    const int64_t block = i0 / layout.block;  // the four entries share a block (block % 32 == 0)
    const int64_t bit = block * layout.words_per_block * 32 + (i0 % layout.block) * bits;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t j = 0; j < rows; ++j) {  // rank order: the same sums on every rank
      const uint8_t* row = gathered + j * layout.nbytes;
      const uint32_t header = wire::read_header(row, block);
      const uint32_t group = quant::read_group(reinterpret_cast<const uint32_t*>(row + layout.codes_offset), bit, bits);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (q < count) acc[q] = rule.add(acc[q], j, Codec::decode(header, quant::code_of(group, q, bits), levels));
      }
    }
    T hv[4];
    load4(h, i0, count, vectors, hv);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (q < count) hv[q] = add_decoded(hv[q], rule.finish(acc[q]));
    }
    store4(h, i0, count, vectors, hv);
  }
}

void check_bits(const wire::QuantLayout& layout) {
  if (layout.bits < 1 || layout.bits > 8) {
    throw std::runtime_error("efcomm: the quantizer kernels pack at most 8 bits per entry; got " +
                             std::to_string(layout.bits));
  }
}

}  // namespace

template <typename T, typename Codec>
void quantize(const T* x, T* state, const wire::QuantLayout& layout, int32_t levels, bool stochastic, uint64_t seed,
              uint64_t stream_id, DecodeRule own, uint8_t* message, cudaStream_t stream) {
  check_bits(layout);
  const bool vectors = quad_aligned(x) && (state == nullptr || quad_aligned(state));
  const unsigned int grid = resident_grid((layout.nblocks + kWarpsPerCta - 1) / kWarpsPerCta);
  quantize_kernel<T, Codec>
      <<<grid, kThreads, 0, stream>>>(x, state, layout, levels, stochastic, seed, stream_id, own, vectors, message);
  check_launch("quantize");
}

template <typename T, typename Codec>
void quant_decode_add(T* h, const uint8_t* gathered, int64_t rows, const wire::QuantLayout& layout, int32_t levels,
                      DecodeRule rule, cudaStream_t stream) {
  check_bits(layout);
  const int64_t groups = (layout.numel + 3) / 4;
  const unsigned int grid = resident_grid((groups + kThreads - 1) / kThreads);
  quant_decode_kernel<T, Codec>
      <<<grid, kThreads, 0, stream>>>(h, gathered, rows, layout, levels, rule, quad_aligned(h));
  check_launch("quant_decode_add");
}

#define EFCOMM_INSTANTIATE(T, Codec)                                                                                   \
  template void quantize<T, Codec>(const T*, T*, const wire::QuantLayout&, int32_t, bool, uint64_t, uint64_t,          \
                                   DecodeRule, uint8_t*, cudaStream_t);                                                \
  template void quant_decode_add<T, Codec>(T*, const uint8_t*, int64_t, const wire::QuantLayout&, int32_t, DecodeRule, \
                                           cudaStream_t);
#define EFCOMM_INSTANTIATE_SCHEME(Codec) \
  EFCOMM_INSTANTIATE(float, Codec)       \
  EFCOMM_INSTANTIATE(__half, Codec)      \
  EFCOMM_INSTANTIATE(__nv_bfloat16, Codec)

EFCOMM_QUANT_SCHEMES(EFCOMM_INSTANTIATE_SCHEME)
#undef EFCOMM_INSTANTIATE_SCHEME
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
