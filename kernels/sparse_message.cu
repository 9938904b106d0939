#include "kernels/sparse_message.cuh"

#include "kernels/float_convert.cuh"
#include "kernels/launch.cuh"

namespace efcomm::kernels {
namespace {

// subtract_from may alias src (EF packs e and then clears the sent entries of e).
template <typename T>
__global__ void pack_selected_kernel(const T* src, const int32_t* __restrict__ indices, int64_t k,
                                     T* add_to, T* subtract_from, T* __restrict__ msg_values,
                                     int32_t* __restrict__ msg_indices) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t i = indices[t];
    const T value = src[i];
    msg_values[t] = value;
    msg_indices[t] = i;
    if (add_to != nullptr) {
      add_to[i] = from_float<T>(__fadd_rn(to_float(add_to[i]), to_float(value)));
    }
    if (subtract_from != nullptr) {
      subtract_from[i] = from_float<T>(__fsub_rn(to_float(subtract_from[i]), to_float(value)));
    }
  }
}

template <typename T>
__global__ void momentum_update_kernel(T* __restrict__ v, const T* __restrict__ g, int64_t n,
                                       float one_minus_eta, float eta) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    v[i] = from_float<T>(
        __fadd_rn(__fmul_rn(one_minus_eta, to_float(v[i])), __fmul_rn(eta, to_float(g[i]))));
  }
}

template <typename T>
__global__ void motef_track_kernel(const T* __restrict__ g, T* __restrict__ M, T* __restrict__ V,
                                   const T* __restrict__ G, const T* __restrict__ G_mean, int64_t n, float lam,
                                   float gamma) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float m = to_float(M[i]);
    const float step = __fmul_rn(lam, __fsub_rn(to_float(g[i]), m));
    const float gossip = __fmul_rn(gamma, __fsub_rn(to_float(G_mean[i]), to_float(G[i])));
    M[i] = from_float<T>(__fadd_rn(m, step));
    V[i] = from_float<T>(__fadd_rn(__fadd_rn(to_float(V[i]), step), gossip));
  }
}

constexpr int kDecodeTile = 4096;  // h entries per block: 16 KiB of fp32 sums

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// offsets[j * (tiles + 1) + t] = the first position p of rank j's indices with
// idx[p] >= t * kDecodeTile (p = k when none): thread (j, p) writes the tiles that begin
// between idx[p - 1] and idx[p]. Out-of-range indices are clamped to the first or last tile.
__global__ void decode_offsets_kernel(const uint8_t* __restrict__ gathered, int64_t world,
                                      int64_t row_bytes, int64_t indices_offset, int64_t k,
                                      int64_t tiles, int32_t* __restrict__ offsets) {
  const int64_t per_rank = k + 1;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < world * per_rank;
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

template <typename T>
__global__ void tile_decode_kernel(T* __restrict__ h, int64_t n, const uint8_t* __restrict__ gathered,
                                   int64_t world, int64_t row_bytes, int64_t indices_offset, int64_t k,
                                   const float* __restrict__ weights, float scale,
                                   const int32_t* __restrict__ offsets, int64_t tiles) {
  __shared__ float acc[kDecodeTile];
  __shared__ uint8_t named[kDecodeTile];
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t base = tile * kDecodeTile;
    for (int e = threadIdx.x; e < kDecodeTile; e += blockDim.x) {
      acc[e] = 0.0f;
      named[e] = 0;
    }
    __syncthreads();
    for (int64_t j = 0; j < world; ++j) {  // rank order: the same sums on every rank
      const int32_t* row_offsets = offsets + j * (tiles + 1);
      const int64_t lo = min64(max64(row_offsets[tile], 0), k);
      const int64_t hi = min64(max64(row_offsets[tile + 1], lo), k);
      const uint8_t* row = gathered + j * row_bytes;
      const auto* values = reinterpret_cast<const T*>(row);
      const auto* idx = reinterpret_cast<const int32_t*>(row + indices_offset);
      const float weight = weights == nullptr ? 1.0f : weights[j];
      for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
        const int64_t local = static_cast<int64_t>(idx[p]) - base;
        if (local >= 0 && local < kDecodeTile && base + local < n) {  // distinct within a rank
          acc[local] = __fadd_rn(acc[local], __fmul_rn(weight, to_float(values[p])));
          named[local] = 1;
        }
      }
      __syncthreads();
    }
    for (int e = threadIdx.x; e < kDecodeTile && base + e < n; e += blockDim.x) {
      if (named[e]) h[base + e] = from_float<T>(__fadd_rn(to_float(h[base + e]), __fmul_rn(acc[e], scale)));
    }
    __syncthreads();  // before the next tile clears the sums
  }
}

}  // namespace

template <typename T>
void pack_selected(const T* src, const int32_t* indices, int64_t k, T* add_to, T* subtract_from,
                   T* msg_values, int32_t* msg_indices, cudaStream_t stream) {
  pack_selected_kernel<T><<<grid_for(k), kThreads, 0, stream>>>(src, indices, k, add_to,
                                                                 subtract_from, msg_values,
                                                                 msg_indices);
  check_launch("pack_selected");
}

template <typename T>
void momentum_update(T* v, const T* g, int64_t n, float one_minus_eta, float eta,
                     cudaStream_t stream) {
  momentum_update_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(v, g, n, one_minus_eta, eta);
  check_launch("momentum_update");
}

template <typename T>
void motef_track(const T* g, T* M, T* V, const T* G, const T* G_mean, int64_t n, float lam, float gamma,
                 cudaStream_t stream) {
  if (n == 0) return;
  motef_track_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(g, M, V, G, G_mean, n, lam, gamma);
  check_launch("motef_track");
}

int64_t decode_tiles(int64_t n) { return (n + kDecodeTile - 1) / kDecodeTile; }

int64_t decode_workspace_ints(int64_t world, int64_t n) { return world * (decode_tiles(n) + 1); }

template <typename T>
void sparse_decode_add(T* h, int64_t n, const uint8_t* gathered, int64_t world, int64_t row_bytes,
                       int64_t indices_offset, int64_t k, const float* weights, float scale,
                       int32_t* workspace, cudaStream_t stream) {
  if (n == 0 || world == 0) return;
  const int64_t tiles = decode_tiles(n);
  // Zeroed first: a malformed message (indices out of order) leaves offsets unwritten.
  cudaMemsetAsync(workspace, 0, decode_workspace_ints(world, n) * sizeof(int32_t), stream);
  decode_offsets_kernel<<<grid_for(world * (k + 1)), kThreads, 0, stream>>>(
      gathered, world, row_bytes, indices_offset, k, tiles, workspace);
  check_launch("decode_offsets");
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(tiles, 65535 * 8));
  tile_decode_kernel<T><<<blocks, kThreads, 0, stream>>>(h, n, gathered, world, row_bytes, indices_offset,
                                                         k, weights, scale, workspace, tiles);
  check_launch("tile_decode");
}

#define EFCOMM_INSTANTIATE(T)                                                                 \
  template void pack_selected<T>(const T*, const int32_t*, int64_t, T*, T*, T*, int32_t*,   \
                                 cudaStream_t);                                              \
  template void momentum_update<T>(T*, const T*, int64_t, float, float, cudaStream_t);      \
  template void motef_track<T>(const T*, T*, T*, const T*, const T*, int64_t, float, float, cudaStream_t); \
  template void sparse_decode_add<T>(T*, int64_t, const uint8_t*, int64_t, int64_t, int64_t,  \
                                     int64_t, const float*, float, int32_t*, cudaStream_t);

EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
