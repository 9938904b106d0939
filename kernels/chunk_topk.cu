#include "kernels/chunk_topk.cuh"

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "kernels/chunk_topk_rule.h"
#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"
#include "kernels/vector_access.cuh"

namespace efcomm::kernels {
namespace {

constexpr int kChunkThreads = 256;
constexpr int kItems = static_cast<int>(chunk_topk::kMaxChunk) / kChunkThreads;            // entries per thread: 16
constexpr int kMaxWords = static_cast<int>((chunk_topk::kMaxChunk * (12 + 8) + 31) / 32);  // a chunk's fields
static_assert(kItems % 4 == 0, "a thread's entries are read four at a time");

using ChunkSort = cub::BlockRadixSort<uint32_t, kChunkThreads, kItems, uint16_t>;
using ChunkScan = cub::BlockScan<int, kChunkThreads>;

struct EncodeShared {
  union {
    ChunkSort::TempStorage sort;
    ChunkScan::TempStorage scan;
  } temp;
  uint32_t words[kMaxWords];            // the chunk's fields, ORed in
  uint8_t kept[chunk_topk::kMaxChunk];  // by offset: whether the entry is kept
  uint32_t top_key;                     // the chunk's largest magnitude key
};

// d = T(float(a) - float(*b)) (b given) or a, as a float.
template <typename T>
__device__ __forceinline__ float difference(T a, const T* b) {
  return load(store<T>(b != nullptr ? load(a) - load(*b) : load(a)));
}

// Thread `tid` holds entries kItems * tid + q (q < kItems) of every chunk: the blocked arrangement
// that the sort and the scan read in offset order.
template <typename T>
__global__ void __launch_bounds__(kChunkThreads, 2)
    chunk_encode_kernel(const T* __restrict__ a, T* b, wire::ChunkTopkLayout layout, DecodeRule own, bool vectors,
                        uint8_t* __restrict__ message) {
  __shared__ EncodeShared shared;
  const int tid = static_cast<int>(threadIdx.x);
  const int first = kItems * tid;
  for (int64_t c = blockIdx.x; c < layout.chunks; c += gridDim.x) {
    const int64_t start = c * layout.chunk;
    const int len = static_cast<int>(layout.length(c));
    const int kept = static_cast<int>(layout.kept(c));
    const int words = static_cast<int>(layout.words(c));
    for (int w = tid; w < words; w += kChunkThreads) shared.words[w] = 0;
    for (int e = tid; e < len; e += kChunkThreads) shared.kept[e] = 0;

    // The sort's keys of this thread's entries (past the chunk: key 0, after every entry of the
    // chunk by the stable order, and never kept since kept <= len).
    uint32_t keys[kItems];
    uint16_t offsets[kItems];
#pragma unroll
    for (int g = 0; g < kItems / 4; ++g) {
      const int e0 = first + 4 * g;
      const int count = max(0, min(4, len - e0));
      T av[4];
      T bv[4];
      load4(a, start + e0, count, vectors, av);
      if (b != nullptr) load4(b, start + e0, count, vectors, bv);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        offsets[4 * g + q] = static_cast<uint16_t>(e0 + q);
        keys[4 * g + q] =
            q < count ? chunk_topk::magnitude_key(difference(av[q], b != nullptr ? &bv[q] : nullptr)) : 0u;
      }
    }
    __syncthreads();  // the flags are zeroed before any thread marks one

    ChunkSort(shared.temp.sort).SortDescending(keys, offsets);
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      if (first + q < kept) shared.kept[offsets[q]] = 1;
    }
    if (tid == 0) shared.top_key = keys[0];  // rank 0: the largest key, always kept
    __syncthreads();

    // Each kept entry's position in offset order, its code, its field and the state update.
    int flags[kItems];
    int positions[kItems];
#pragma unroll
    for (int q = 0; q < kItems; ++q) flags[q] = first + q < len ? shared.kept[first + q] : 0;
    ChunkScan(shared.temp.scan).ExclusiveSum(flags, positions);
    const uint32_t scale_bits = float_field(chunk_topk::magnitude_of_key(shared.top_key));
    const float s = float_of_field(scale_bits);
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      if (flags[q] == 0) continue;
      const int e = first + q;
      // d again, for the few kept entries (b is written below, by this thread alone).
      const T old = b != nullptr ? b[start + e] : T{};
      const uint32_t code = chunk_topk::encode(difference(a[start + e], b != nullptr ? &old : nullptr), s, layout.bits);
      const uint32_t field = chunk_topk::field_of(e, code, layout);
      const int64_t bit = static_cast<int64_t>(positions[q]) * layout.field_bits;
      const int word = static_cast<int>(bit / 32);
      const int shift = static_cast<int>(bit % 32);
      atomicOr(&shared.words[word], field << shift);  // integer ORs: the same bits in any order
      if (shift + layout.field_bits > 32) atomicOr(&shared.words[word + 1], field >> (32 - shift));
      if (b != nullptr) b[start + e] = add_decoded(old, own.single(chunk_topk::decode(s, code, layout.bits)));
    }
    if (tid == 0) wire::write_header(message, c, scale_bits);
    __syncthreads();

    auto* out = reinterpret_cast<uint32_t*>(message + layout.region_offset(c));
    for (int w = tid; w < words; w += kChunkThreads) out[w] = shared.words[w];
    __syncthreads();  // the next chunk reuses the shared memory
  }
}

template <typename T>
__global__ void __launch_bounds__(kChunkThreads, 4)
    chunk_decode_kernel(T* h, const uint8_t* __restrict__ gathered, int64_t rows, wire::ChunkTopkLayout layout,
                        DecodeRule rule) {
  __shared__ float acc[chunk_topk::kMaxChunk];
  __shared__ uint8_t carried[chunk_topk::kMaxChunk];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t c = blockIdx.x; c < layout.chunks; c += gridDim.x) {
    const int64_t start = c * layout.chunk;
    const int len = static_cast<int>(layout.length(c));
    const int kept = static_cast<int>(layout.kept(c));
    for (int e = tid; e < len; e += kChunkThreads) {
      acc[e] = 0.0f;
      carried[e] = 0;
    }
    __syncthreads();
    for (int64_t j = 0; j < rows; ++j) {  // rank order: the same sums on every rank
      const uint8_t* row = gathered + j * layout.nbytes;
      const uint32_t* words = chunk_topk::region_of(row, layout, c);
      // Each field checked against the one before it; the row is added only when all ascend.
      bool ascending = true;
      for (int t = tid; t < kept; t += kChunkThreads) {
        const int64_t e = chunk_topk::offset_of(wire::read_field(words, t, layout.field_bits), layout);
        const int64_t before =
            t > 0 ? chunk_topk::offset_of(wire::read_field(words, t - 1, layout.field_bits), layout) : -1;
        ascending = ascending && e < len && e > before;
      }
      if (__syncthreads_and(ascending)) {  // distinct offsets: no two threads add to one entry
        const float s = chunk_topk::scale_of(row, c);
        for (int t = tid; t < kept; t += kChunkThreads) {
          const uint32_t field = wire::read_field(words, t, layout.field_bits);
          const int64_t e = chunk_topk::offset_of(field, layout);
          acc[e] = rule.add(acc[e], j, chunk_topk::decode(s, chunk_topk::code_of(field, layout), layout.bits));
          carried[e] = 1;
        }
      }
      __syncthreads();
    }
    for (int e = tid; e < len; e += kChunkThreads) {
      if (carried[e]) h[start + e] = add_decoded(h[start + e], rule.finish(acc[e]));
    }
    __syncthreads();  // the next chunk reuses the shared memory
  }
}

}  // namespace

template <typename T>
void chunk_topk_encode(const T* a, T* b, const wire::ChunkTopkLayout& layout, DecodeRule own, uint8_t* message,
                       cudaStream_t stream) {
  const bool vectors = quad_aligned(a) && (b == nullptr || quad_aligned(b));
  chunk_encode_kernel<T>
      <<<resident_grid(layout.chunks, 4), kChunkThreads, 0, stream>>>(a, b, layout, own, vectors, message);
  check_launch("chunk_topk_encode");
}

template <typename T>
void chunk_topk_decode_add(T* h, const uint8_t* gathered, int64_t rows, const wire::ChunkTopkLayout& layout,
                           DecodeRule rule, cudaStream_t stream) {
  chunk_decode_kernel<T>
      <<<resident_grid(layout.chunks, 8), kChunkThreads, 0, stream>>>(h, gathered, rows, layout, rule);
  check_launch("chunk_topk_decode_add");
}

#define EFCOMM_INSTANTIATE(T)                                                                                         \
  template void chunk_topk_encode<T>(const T*, T*, const wire::ChunkTopkLayout&, DecodeRule, uint8_t*, cudaStream_t); \
  template void chunk_topk_decode_add<T>(T*, const uint8_t*, int64_t, const wire::ChunkTopkLayout&, DecodeRule,       \
                                         cudaStream_t);
EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
