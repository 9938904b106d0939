#pragma once
// Exact Top-k selection by magnitude without sorting the tensor (torch-free; raw pointers,
// int64 sizes, an explicit stream). The ranked values are x[i], or T(a[i] - b[i]) for the
// error-feedback encoders, computed on the fly and never materialised.
//
// Order (the CPU reference's, csrc/topk_cpu.cpp): larger magnitude first, every NaN above
// +inf, ties to the lower index. The magnitude's bits order magnitudes (IEEE formats), so
// each value gets an unsigned key (fp32: 31 bits; fp16/bf16: 15 bits; all NaNs the largest).
//
// Two passes over the tensor:
//   1. topk_histogram: a 4096-bin histogram of the top 12 key bits, then the boundary bin
//      that holds the k-th largest key (a one-thread scan from the top);
//   2. topk_finish: the entries in or above that bin, in index order (cub::DeviceSelect);
//      their keys sorted (cub::DeviceRadixSort) give the k-th key T and how many entries
//      equal to T are taken; the lowest such indices are kept; a last stable selection over
//      the candidates writes the k indices, ascending.
// Between the passes the caller reads the candidate count (info[1] + info[2]) on the host to
// size the workspace: one 16-byte device-to-host copy per call. (The messages and the state
// update: kernels/sparse_message.cuh.)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/topk_hint.h"

namespace efcomm::kernels {

constexpr int kTopkBins = 4096;

// a[i] when b is null, else T(float(a[i]) - float(b[i])).
template <typename T>
struct TopkSource {
  const T* a;
  const T* b;
};

// hist: kTopkBins uint32 (zeroed here). info (device, 3 int64): the boundary bin, the
// entries in higher bins, the entries in the boundary bin. Requires 1 <= k <= n.
template <typename T>
void topk_histogram(TopkSource<T> src, int64_t n, int64_t k, uint32_t* hist, int64_t* info, cudaStream_t stream);

// Bytes of workspace topk_finish needs for n entries of which `candidates` are candidates.
template <typename T>
size_t topk_finish_workspace(int64_t n, int64_t candidates);

// Writes the k selected indices, ascending, to out_indices (int32). The candidates are the
// entries in or above info's boundary bin, or given_candidates (the hinted path's, in index
// order, all of the entries that can be selected; `candidates` of them, also at the device
// address given_count). With hint (device float[2]), writes the next call's hint:
// hint[0] = float32(kTopkHintMargin * |k-th largest|) when finite and positive, else 0;
// hint[1] = fell_back (1 or 0).
template <typename T>
void topk_finish(TopkSource<T> src, int64_t n, int64_t k, const int64_t* info, int64_t candidates, void* workspace,
                 size_t workspace_bytes, int32_t* out_indices, cudaStream_t stream,
                 const int64_t* given_candidates = nullptr, const int64_t* given_count = nullptr, float* hint = nullptr,
                 bool fell_back = false);

// The hinted path (threshold Top-k): one pass writes, in index order, the entries whose
// magnitude reaches hint[0] (and NaNs), keeping the first cap of them, and counts them all
// (count: device int64). When k <= count <= cap, they hold the exact Top-k: topk_finish on
// them gives it without the histogram pass. Otherwise the caller falls back to the two passes.
template <typename T>
size_t topk_hinted_workspace(int64_t n, int64_t cap);

template <typename T>
void topk_hinted_candidates(TopkSource<T> src, int64_t n, const float* hint, int64_t cap, void* workspace,
                            size_t workspace_bytes, int64_t* candidates, int64_t* count, cudaStream_t stream);

}  // namespace efcomm::kernels
