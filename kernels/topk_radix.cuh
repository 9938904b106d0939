#pragma once
// The sync-free exact Top-k select (EFCOMM_TOPK_SELECT=radix2; torch-free: raw pointers, int64
// sizes, an explicit stream). Its rules, shared with the host emulation that tests them, are
// kernels/topk_radix_rule.h; the order is the CPU reference's (indices ascending, ties to the
// lower index, NaN above inf); the ranked values are a[i] or T(a[i] - b[i]), formed on the fly.
//
// Kernels, all launched every call whatever the data (so a call is one fixed sequence of
// launches, graph-capturable, with no host read):
//   init      resets the device state, the histogram and the tile states of the ordered writes;
//   hinted    (with a hint) writes, in index order, the entries that reach tau to the candidate
//             buffer; when they hold the Top-k (k <= count <= cap) every later kernel reads them
//             instead of the input (one read of the input in all);
//   pass p    for p < passes (3 for float32, 2 for 16-bit types): the 2^11-bin histogram of digit
//             p among the entries that match the prefix decided so far, counted in each block's
//             shared memory with warp-aggregated increments (__match_any_sync), merged once per
//             block; the last block to finish chooses the bin of the k-th largest key and
//             advances the state. Pass 1 over the input also writes, in index order, the entries
//             at or above pass 0's bin to the candidate buffer when they fit (the filter of pass
//             0 fused with the histogram of pass 1), and later kernels read those. A pass after
//             the selection is fixed (early stop) returns at once;
//   final     writes the k selected indices in index order (an ordered compaction: CUB's
//             decoupled look-back over tiles taken in order), and with a hint the next hint.
// Blocks take tiles of kRadixTile entries from a counter (persistent blocks, a grid capped by
// the GPU's size); loads are 16-byte vectors where the pointers allow.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/topk_select.cuh"

namespace efcomm::kernels {

// Bytes of device workspace for n entries of which k are selected (with or without a hint).
template <typename T>
size_t topk_radix_workspace(int64_t n, int64_t k);

// Writes the k indices (int32, ascending) of the Top-k of src. With hint (device float[2],
// kernels/topk_hint.h): reads tau = hint[0], writes the next hint and whether this call fell
// back. Requires 1 <= k <= n < 2^31.
template <typename T>
void topk_radix_select(TopkSource<T> src, int64_t n, int64_t k,
                       float* hint,      // [2] or null
                       void* workspace,  // [topk_radix_workspace<T>(n, k)] bytes
                       size_t workspace_bytes,
                       int32_t* out_indices,  // [k]
                       cudaStream_t stream);

}  // namespace efcomm::kernels
