#pragma once
// Four consecutive values of a float32 / bfloat16 / float16 array in one memory access (16 or 8
// bytes), for the kernels that stream a tensor at the bandwidth bound. Device code only.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

namespace efcomm::kernels {

// Whether p allows the four-value accesses below at every multiple of four entries.
template <typename T>
inline bool quad_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

// out[q] = p[i + q] for q < count (at most 4; i a multiple of 4): one access when `vectors`
// (p quad_aligned) and count == 4.
template <typename T>
__device__ __forceinline__ void load4(const T* p, int64_t i, int count, bool vectors, T (&out)[4]) {
  if (vectors && count == 4) {
    if constexpr (sizeof(T) == 4) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p + i);
      memcpy(out, &raw, 16);
    } else {
      const uint2 raw = *reinterpret_cast<const uint2*>(p + i);
      memcpy(out, &raw, 8);
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (q < count) out[q] = p[i + q];
  }
}

// p[i + q] = in[q] for q < count, as load4.
template <typename T>
__device__ __forceinline__ void store4(T* p, int64_t i, int count, bool vectors, const T (&in)[4]) {
  if (vectors && count == 4) {
    if constexpr (sizeof(T) == 4) {
      uint4 raw;
      memcpy(&raw, in, 16);
      *reinterpret_cast<uint4*>(p + i) = raw;
    } else {
      uint2 raw;
      memcpy(&raw, in, 8);
      *reinterpret_cast<uint2*>(p + i) = raw;
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (q < count) p[i + q] = in[q];
  }
}

}  // namespace efcomm::kernels
