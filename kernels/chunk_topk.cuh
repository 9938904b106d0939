#pragma once
// Torch-free CUDA kernels of chunked Top-k (the rule: kernels/chunk_topk_rule.h; the layout:
// kernels/wire_layout.h, ChunkTopkLayout). Raw device pointers, 64-bit sizes, an explicit stream;
// T is float, __half or __nv_bfloat16. Launch failures throw std::runtime_error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/decode_rule.h"
#include "kernels/wire_layout.h"

namespace efcomm::kernels {

// Writes the message of d (every byte of layout.nbytes): d_i = a_i, or T(float(a_i) - float(b_i))
// with b, and then b_i += own.single(v_i) at each kept entry, v_i the value its code decodes to.
// One thread block per chunk (a grid of persistent blocks): the chunk's magnitude keys sorted in
// shared memory (CUB's stable block radix sort, so equal magnitudes keep the lower offset first),
// the kept entries numbered in offset order by a block scan, their fields ORed into the chunk's
// words in shared memory, then written out.
template <typename T>
void chunk_topk_encode(const T* a,  // [layout.numel]
                       T* b,        // [layout.numel], updated in place, or null
                       const wire::ChunkTopkLayout& layout,
                       DecodeRule own,    // own_message_rule(scale)
                       uint8_t* message,  // [layout.nbytes], 4-byte aligned
                       cudaStream_t stream);

// The decode rule (kernels/decode_rule.h) over `rows` gathered messages, without floating-point
// atomics: one thread block per chunk sums the rows' values in rank order in shared memory
// (within a row a chunk's offsets are distinct), then updates each entry that some row carries
// once. A row whose offsets in a chunk do not ascend within the chunk's length is skipped in that
// chunk (the CPU reference raises).
template <typename T>
void chunk_topk_decode_add(T* h,                     // [layout.numel], updated in place
                           const uint8_t* gathered,  // [rows, layout.nbytes]
                           int64_t rows, const wire::ChunkTopkLayout& layout, DecodeRule rule, cudaStream_t stream);

}  // namespace efcomm::kernels
