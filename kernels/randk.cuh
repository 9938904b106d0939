#pragma once
// Torch-free CUDA kernels of Rand-k's indices (which entries: kernels/randk_rule.h; messages:
// kernels/sparse_message.cuh; the decode of shared-index rows: kernels/dense_message.cuh). Raw device pointers, 64-bit
// sizes, an explicit stream; T is float, __half or __nv_bfloat16. No host reads: every op can run inside a CUDA graph.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/randk_rule.h"

namespace efcomm::kernels {

// Bytes of device workspace randk_uniform_indices needs for k indices.
size_t randk_uniform_workspace(int64_t k);

// out[t] for t < k: pi(0), ..., pi(k - 1) sorted ascending (k threads, then a radix sort of the k
// keys on their permutation_bits(pi) bits).
void randk_uniform_indices(const randk::Permutation& pi, int64_t k,
                           int32_t* out,     // [k]
                           void* workspace,  // [randk_uniform_workspace(k)] bytes
                           size_t workspace_bytes, cudaStream_t stream);

// out[t] = randk::window_index(offset, n, k, t, ascending) for t < k.
void randk_window_indices(int64_t offset, int64_t n, int64_t k, bool ascending,
                          int32_t* out,  // [k]
                          cudaStream_t stream);

}  // namespace efcomm::kernels
