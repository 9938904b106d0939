#pragma once
// Torch-free CUDA kernels that write and read sparse messages (Top-k; Rand-k with per-rank
// indices) and Rand-k's shared-index values (layouts: kernels/wire_layout.h). Every entry point
// takes raw device pointers, 64-bit sizes and the stream to launch on; T is float, __half or
// __nv_bfloat16. Launch failures throw std::runtime_error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/decode_rule.h"

namespace efcomm::kernels {

// The encoders' gather, for t < k with i = indices[t] and v = T(float(a[i]) - float(b[i])) (b
// given) or a[i]: msg_values[t] = v (NaN canonical); msg_indices[t] = i unless msg_indices is
// null; with b, b[i] += own.single(v) (kernels/decode_rule.h). The indices must be distinct.
template <typename T>
void gather_message(const T* a,              // [n]
                    T* b,                    // [n], updated in place, or null
                    const int32_t* indices,  // [k] distinct, in [0, n)
                    int64_t k,
                    DecodeRule own,        // own_message_rule(scale)
                    T* msg_values,         // [k]
                    int32_t* msg_indices,  // [k] or null
                    cudaStream_t stream);

// The decode rule (kernels/decode_rule.h) over `rows` gathered sparse messages of k entries
// (values at byte 0, int32 indices at byte indices_offset, ascending in every message, as every
// efcomm encoder writes them), every fp32 operation rounded on its own; entries no message
// carries are left untouched. No floating-point atomics: the index space is cut into tiles, a
// pass over the indices finds where each rank's entries of each tile begin (offsets, int32
// [rows, tiles + 1], from decode_workspace_ints), and a block per tile (persistent blocks) sums
// its ranks in rank order in shared memory, with work in proportion to the entries the messages
// carry there. It reads each message once and updates h once, only where a message names it. Entries outside [0, n) are
// skipped; a message whose indices are not ascending is decoded partially (the CPU reference raises on both).
int64_t decode_tiles(int64_t n);
int64_t decode_workspace_ints(int64_t rows, int64_t n);

template <typename T>
void sparse_decode_add(T* h,  // [n], updated in place
                       int64_t n,
                       const uint8_t* gathered,  // [rows, row_bytes]
                       int64_t rows, int64_t row_bytes, int64_t indices_offset, int64_t k,
                       DecodeRule rule,     // its weights on the device, or null
                       int32_t* workspace,  // [decode_workspace_ints(rows, n)]
                       cudaStream_t stream);

}  // namespace efcomm::kernels
