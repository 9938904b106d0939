#include "kernels/sparse_message.cuh"

#include <algorithm>

#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"

namespace efcomm::kernels {
namespace {

template <typename T>
__global__ void gather_message_kernel(const T* a, T* b, const int32_t* __restrict__ indices, int64_t k, DecodeRule own,
                                      T* __restrict__ msg_values, int32_t* __restrict__ msg_indices) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t i = indices[t];
    msg_values[t] = encode_entry(a, b, i, own);
    if (msg_indices != nullptr) msg_indices[t] = i;
  }
}

constexpr int kDecodeTile = 4096;  // h entries per block: 16 KiB of fp32 sums, 48 KiB with the marks

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) {
  return a > b ? a : b;
}

// offsets[j * (tiles + 1) + t] = the first position p of rank j's indices with
// idx[p] >= t * kDecodeTile (p = k when none): thread (j, p) writes the tiles that begin
// between idx[p - 1] and idx[p]. Out-of-range indices are clamped to the first or last tile.
__global__ void decode_offsets_kernel(const uint8_t* __restrict__ gathered, int64_t rows, int64_t row_bytes,
                                      int64_t indices_offset, int64_t k, int64_t tiles, int32_t* __restrict__ offsets) {
  const int64_t per_rank = k + 1;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < rows * per_rank;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = t / per_rank;
    const int64_t p = t % per_rank;
    const auto* idx = reinterpret_cast<const int32_t*>(gathered + j * row_bytes + indices_offset);
    // the first tile that starts above idx[p - 1], and the last that starts at or below idx[p]
    const int64_t from = p == 0 || idx[p - 1] < 0 ? 0 : min64(idx[p - 1] / kDecodeTile + 1, tiles);
    const int64_t to = p == k ? tiles : idx[p] < 0 ? -1 : min64(idx[p] / kDecodeTile, tiles);
    for (int64_t tile = from; tile <= to; ++tile) offsets[j * (tiles + 1) + tile] = static_cast<int32_t>(p);
  }
}

// One tile of h per iteration of a persistent block. The sums live in shared memory, touched only
// at the entries the messages carry: rank by rank (a barrier between ranks keeps rank order), the
// first rank that carries an entry in this tile (its stamp is not yet the tile's) starts its sum
// and owns it; then each owner updates h once. Stamps make clearing between tiles unnecessary,
// and no thread writes a mark that another reads without a barrier between. Work per tile: the
// entries the messages carry there, not the tile's size.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    tile_decode_kernel(T* __restrict__ h, int64_t n, const uint8_t* __restrict__ gathered, int64_t rows,
                       int64_t row_bytes, int64_t indices_offset, int64_t k, DecodeRule rule,
                       const int32_t* __restrict__ offsets, int64_t tiles) {
  __shared__ float acc[kDecodeTile];
  __shared__ int32_t stamp[kDecodeTile];  // the last tile that carried the entry
  __shared__ int32_t owner[kDecodeTile];  // the first rank that carried it there
  for (int e = threadIdx.x; e < kDecodeTile; e += blockDim.x) stamp[e] = -1;
  __syncthreads();
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t base = tile * kDecodeTile;
    const auto tile_stamp = static_cast<int32_t>(tile);
    // Rank j's entries of this tile: positions [lo, hi) of its message.
    auto range = [&](int64_t j, int64_t& lo, int64_t& hi) {
      const int32_t* row_offsets = offsets + j * (tiles + 1);
      lo = min64(max64(row_offsets[tile], 0), k);
      hi = min64(max64(row_offsets[tile + 1], lo), k);
    };
    auto local_of = [&](const int32_t* idx, int64_t p) {  // -1 outside the tile or past n
      const int64_t local = static_cast<int64_t>(idx[p]) - base;
      return local >= 0 && local < kDecodeTile && base + local < n ? static_cast<int>(local) : -1;
    };
    for (int64_t j = 0; j < rows; ++j) {  // rank order: the same sums on every rank
      int64_t lo, hi;
      range(j, lo, hi);
      if (lo == hi) continue;  // the same for every thread: no barrier needed
      const uint8_t* row = gathered + j * row_bytes;
      const auto* values = reinterpret_cast<const T*>(row);
      const auto* idx = reinterpret_cast<const int32_t*>(row + indices_offset);
      for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
        const int local = local_of(idx, p);
        if (local < 0) continue;  // distinct within a rank: no two threads share a local entry
        if (stamp[local] != tile_stamp) {
          stamp[local] = tile_stamp;
          owner[local] = static_cast<int32_t>(j);
          acc[local] = rule.add(0.0f, j, load(values[p]));
        } else {
          acc[local] = rule.add(acc[local], j, load(values[p]));
        }
      }
      __syncthreads();
    }
    for (int64_t j = 0; j < rows; ++j) {
      int64_t lo, hi;
      range(j, lo, hi);
      const auto* idx = reinterpret_cast<const int32_t*>(gathered + j * row_bytes + indices_offset);
      for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
        const int local = local_of(idx, p);
        if (local >= 0 && owner[local] == static_cast<int32_t>(j)) {
          h[base + local] = add_decoded(h[base + local], rule.finish(acc[local]));
        }
      }
    }
    __syncthreads();  // before the next tile writes the sums and marks
  }
}

}  // namespace

template <typename T>
void gather_message(const T* a, T* b, const int32_t* indices, int64_t k, DecodeRule own, T* msg_values,
                    int32_t* msg_indices, cudaStream_t stream) {
  gather_message_kernel<T><<<grid_for(k), kThreads, 0, stream>>>(a, b, indices, k, own, msg_values, msg_indices);
  check_launch("gather_message");
}

int64_t decode_tiles(int64_t n) {
  return (n + kDecodeTile - 1) / kDecodeTile;
}

int64_t decode_workspace_ints(int64_t rows, int64_t n) {
  return rows * (decode_tiles(n) + 1);
}

template <typename T>
void sparse_decode_add(T* h, int64_t n, const uint8_t* gathered, int64_t rows, int64_t row_bytes,
                       int64_t indices_offset, int64_t k, DecodeRule rule, int32_t* workspace, cudaStream_t stream) {
  if (n == 0 || rows == 0) return;
  const int64_t tiles = decode_tiles(n);
  // Zeroed first: a malformed message (indices out of order) leaves offsets unwritten.
  check_cuda(cudaMemsetAsync(workspace, 0, decode_workspace_ints(rows, n) * sizeof(int32_t), stream),
             "cudaMemsetAsync (decode offsets)");
  decode_offsets_kernel<<<grid_for(rows * (k + 1)), kThreads, 0, stream>>>(gathered, rows, row_bytes, indices_offset, k,
                                                                           tiles, workspace);
  check_launch("decode_offsets");
  // 48 KiB of static shared memory per block: 4 blocks fit on an H100/H200 multiprocessor.
  tile_decode_kernel<T><<<resident_grid(tiles, 4), kThreads, 0, stream>>>(h, n, gathered, rows, row_bytes,
                                                                          indices_offset, k, rule, workspace, tiles);
  check_launch("tile_decode");
}

#define EFCOMM_INSTANTIATE(T)                                                                                     \
  template void gather_message<T>(const T*, T*, const int32_t*, int64_t, DecodeRule, T*, int32_t*, cudaStream_t); \
  template void sparse_decode_add<T>(T*, int64_t, const uint8_t*, int64_t, int64_t, int64_t, int64_t, DecodeRule, \
                                     int32_t*, cudaStream_t);

EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
