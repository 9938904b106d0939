#pragma once
// Torch-free CUDA kernels of the Top-k messages whose values are narrower than the tensor or
// whose indices are compact (kernels/wire_layout.h: the sparse layout with values of type V,
// and the compact layout). T is the tensor's type (float, __half, __nv_bfloat16), V the values'
// (T, or __nv_bfloat16 / __half for a float tensor). Raw device pointers, 64-bit sizes, an
// explicit stream; launch failures throw std::runtime_error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/decode_rule.h"

namespace efcomm::kernels {

// The encoders' pack, for t < k with i = indices[t] (ascending) and d = T(float(a[i]) -
// float(b[i])) (b given) or a[i]: value t = V(d) (NaN canonical); with b, b[i] += own.single(value
// as sent). compact: offset t = i mod 65536 and each chunk's count (integer atomics: the counts
// do not depend on the order); else index t = i. `message` is zeroed, of the layout's nbytes.
template <typename T, typename V>
void pack_sparse(const T* a,              // [n]
                 T* b,                    // [n], updated in place, or null
                 const int32_t* indices,  // [k] ascending, in [0, n)
                 int64_t n, int64_t k,
                 DecodeRule own,  // own_message_rule(scale)
                 bool compact,
                 uint8_t* message,  // [nbytes] zeroed
                 cudaStream_t stream);

// The sparse layout of T values (values at byte 0, int32 indices at out_indices_offset, rows of
// out_row_bytes) of `rows` gathered messages of k entries with V values, sparse or compact, for
// sparse_decode_add. Where a compact message's counts do not add up to k, its entries past the
// counts get index -1, which the decode skips (the CPU reference raises). chunk_starts: int64
// [rows * (chunks + 1)] of workspace.
template <typename T, typename V>
void expand_sparse(const uint8_t* gathered,  // [rows, row_bytes]
                   int64_t rows, int64_t row_bytes, int64_t n, int64_t k, bool compact,
                   uint8_t* out,  // [rows, out_row_bytes]
                   int64_t out_row_bytes, int64_t out_indices_offset,
                   int64_t* chunk_starts,  // [rows * (chunks + 1)]
                   cudaStream_t stream);

}  // namespace efcomm::kernels
