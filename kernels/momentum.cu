#include "kernels/momentum.cuh"

#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"

namespace efcomm::kernels {
namespace {

template <typename T>
__global__ void motef_track_kernel(const T* __restrict__ g, T* __restrict__ M, T* __restrict__ V,
                                   const T* __restrict__ G, const T* __restrict__ G_mean, int64_t n, float lam,
                                   float gamma) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float m = load(M[i]);
    const float step = lam * (load(g[i]) - m);
    const float gossip = gamma * (load(G_mean[i]) - load(G[i]));
    M[i] = store<T>(m + step);
    V[i] = store<T>((load(V[i]) + step) + gossip);
  }
}

}  // namespace

template <typename T>
void motef_track(const T* g, T* M, T* V, const T* G, const T* G_mean, int64_t n, float lam, float gamma,
                 cudaStream_t stream) {
  if (n == 0) return;
  motef_track_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(g, M, V, G, G_mean, n, lam, gamma);
  check_launch("motef_track");
}

#define EFCOMM_INSTANTIATE(T) \
  template void motef_track<T>(const T*, T*, T*, const T*, const T*, int64_t, float, float, cudaStream_t);

EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
