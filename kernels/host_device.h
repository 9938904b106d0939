#pragma once
// EFCOMM_HD marks the torch-free functions that the CPU reference and the CUDA kernels share:
// host and device code under nvcc, plain inline functions in the C++ compiler.
#if defined(__CUDACC__)
#define EFCOMM_HD __host__ __device__ __forceinline__
#else
#define EFCOMM_HD inline
#endif
