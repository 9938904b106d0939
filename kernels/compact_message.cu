#include "kernels/compact_message.cuh"

#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"
#include "kernels/wire_layout.h"

namespace efcomm::kernels {
namespace {

template <typename T, typename V>
__global__ void pack_sparse_kernel(const T* a, T* b, const int32_t* __restrict__ indices, int64_t n, int64_t k,
                                   DecodeRule own, bool compact, uint8_t* __restrict__ message) {
  const wire::CompactLayout compact_layout = wire::compact_layout(n, k, sizeof(V));
  const wire::SparseLayout sparse_layout = wire::sparse_layout(k, sizeof(V));
  V* values = reinterpret_cast<V*>(message + (compact ? compact_layout.values_offset : 0));
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = indices[t];
    const T d = store<T>(b != nullptr ? load(a[i]) - load(b[i]) : load(a[i]));
    const V value = store<V>(load(d));
    values[t] = value;
    if (b != nullptr) b[i] = add_decoded(b[i], own.single(load(value)));
    if (compact) {
      reinterpret_cast<uint16_t*>(message + compact_layout.offsets_offset)[t] =
          static_cast<uint16_t>(i % wire::kCompactChunk);
      atomicAdd(reinterpret_cast<unsigned int*>(message) + i / wire::kCompactChunk, 1u);
    } else {
      reinterpret_cast<int32_t*>(message + sparse_layout.indices_offset)[t] = static_cast<int32_t>(i);
    }
  }
}

// chunk_starts[j * (chunks + 1) + c]: the position of row j's first entry in chunk c (an
// exclusive scan of its counts; chunks are few, one thread a row).
__global__ void chunk_starts_kernel(const uint8_t* __restrict__ gathered, int64_t rows, int64_t row_bytes,
                                    int64_t chunks, int64_t* __restrict__ chunk_starts) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < rows;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const auto* counts = reinterpret_cast<const uint32_t*>(gathered + j * row_bytes);
    int64_t* starts = chunk_starts + j * (chunks + 1);
    starts[0] = 0;
    for (int64_t c = 0; c < chunks; ++c) starts[c + 1] = starts[c] + counts[c];
  }
}

template <typename T, typename V>
__global__ void expand_sparse_kernel(const uint8_t* __restrict__ gathered, int64_t rows, int64_t row_bytes, int64_t n,
                                     int64_t k, bool compact, uint8_t* __restrict__ out, int64_t out_row_bytes,
                                     int64_t out_indices_offset, const int64_t* __restrict__ chunk_starts) {
  const wire::CompactLayout compact_layout = wire::compact_layout(n, k, sizeof(V));
  const wire::SparseLayout sparse_layout = wire::sparse_layout(k, sizeof(V));
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < rows * k;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = p / k;
    const int64_t t = p % k;
    const uint8_t* row = gathered + j * row_bytes;
    int64_t index;
    V value;
    if (compact) {
      value = reinterpret_cast<const V*>(row + compact_layout.values_offset)[t];
      const int64_t* starts = chunk_starts + j * (compact_layout.chunks + 1);
      int64_t lo = 0, hi = compact_layout.chunks;  // the chunk c with starts[c] <= t < starts[c + 1]
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (starts[mid + 1] <= t)
          lo = mid + 1;
        else
          hi = mid;
      }
      const uint16_t offset = reinterpret_cast<const uint16_t*>(row + compact_layout.offsets_offset)[t];
      index = lo < compact_layout.chunks && starts[compact_layout.chunks] == k ? lo * wire::kCompactChunk + offset : -1;
    } else {
      value = reinterpret_cast<const V*>(row)[t];
      index = reinterpret_cast<const int32_t*>(row + sparse_layout.indices_offset)[t];
    }
    uint8_t* out_row = out + j * out_row_bytes;
    reinterpret_cast<T*>(out_row)[t] = store<T>(load(value));  // exact: V is T or narrower
    reinterpret_cast<int32_t*>(out_row + out_indices_offset)[t] = static_cast<int32_t>(index);
  }
}

}  // namespace

template <typename T, typename V>
void pack_sparse(const T* a, T* b, const int32_t* indices, int64_t n, int64_t k, DecodeRule own, bool compact,
                 uint8_t* message, cudaStream_t stream) {
  pack_sparse_kernel<T, V><<<grid_for(k), kThreads, 0, stream>>>(a, b, indices, n, k, own, compact, message);
  check_launch("pack_sparse");
}

template <typename T, typename V>
void expand_sparse(const uint8_t* gathered, int64_t rows, int64_t row_bytes, int64_t n, int64_t k, bool compact,
                   uint8_t* out, int64_t out_row_bytes, int64_t out_indices_offset, int64_t* chunk_starts,
                   cudaStream_t stream) {
  if (compact) {
    const int64_t chunks = wire::compact_layout(n, k, sizeof(V)).chunks;
    chunk_starts_kernel<<<grid_for(rows), kThreads, 0, stream>>>(gathered, rows, row_bytes, chunks, chunk_starts);
    check_launch("chunk_starts");
  }
  expand_sparse_kernel<T, V><<<grid_for(rows * k), kThreads, 0, stream>>>(
      gathered, rows, row_bytes, n, k, compact, out, out_row_bytes, out_indices_offset, chunk_starts);
  check_launch("expand_sparse");
}

#define EFCOMM_INSTANTIATE(T, V)                                                                                 \
  template void pack_sparse<T, V>(const T*, T*, const int32_t*, int64_t, int64_t, DecodeRule, bool, uint8_t*,    \
                                  cudaStream_t);                                                                 \
  template void expand_sparse<T, V>(const uint8_t*, int64_t, int64_t, int64_t, int64_t, bool, uint8_t*, int64_t, \
                                    int64_t, int64_t*, cudaStream_t);

// Every pair, as the op layer's dispatch names them; the checks let through V = T, or V narrower
// than a float T.
#define EFCOMM_INSTANTIATE_FOR(T)      \
  EFCOMM_INSTANTIATE(T, float)         \
  EFCOMM_INSTANTIATE(T, __nv_bfloat16) \
  EFCOMM_INSTANTIATE(T, __half)

EFCOMM_INSTANTIATE_FOR(float)
EFCOMM_INSTANTIATE_FOR(__nv_bfloat16)
EFCOMM_INSTANTIATE_FOR(__half)
#undef EFCOMM_INSTANTIATE_FOR
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
