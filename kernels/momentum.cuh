#pragma once
// MoTEF's momentum and tracking step (Islamov, Gao, Stich 2024; efcomm.methods.MoTEF), torch-free:
// raw device pointers, 64-bit sizes, an explicit stream; T is float, __half or __nv_bfloat16.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace efcomm::kernels {

// Per entry in float32, every operation rounded on its own (the CPU reference's order):
// s = lam (g - M); M = T(M + s); V = T((V + s) + gamma (G_mean - G)); NaN written canonical.
template <typename T>
void motef_track(const T* g,       // [n]
                 T* M,             // [n], updated in place
                 T* V,             // [n], updated in place
                 const T* G,       // [n]
                 const T* G_mean,  // [n]
                 int64_t n, float lam, float gamma, cudaStream_t stream);

}  // namespace efcomm::kernels
