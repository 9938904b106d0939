#pragma once
// Torch-free CUDA kernels of the dense family and the decode of rows of values it shares with
// Rand-k (layouts: kernels/wire_layout.h). Raw device pointers, 64-bit sizes, an explicit
// stream; T is float, __half or __nv_bfloat16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/decode_rule.h"

namespace efcomm::kernels {

// For i < n: d = T(float(a[i]) - float(sub[i])) (sub given) or a[i]; c = T(d * *factor) (factor
// given: a device float, Clip21's) or d; msg_values[i] = c (NaN canonical); with update,
// update[i] += own.single(c) (update may alias sub: read before written, entry by entry).
template <typename T>
void dense_encode(const T* a,    // [n]
                  const T* sub,  // [n] or null
                  T* update,     // [n], updated in place, or null
                  int64_t n,
                  const float* factor,  // [1] on the device, or null
                  DecodeRule own,       // own_message_rule(scale)
                  T* msg_values,        // [n]
                  cudaStream_t stream);

// The decode rule (kernels/decode_rule.h) over `rows` gathered rows of `count` values at the same
// positions: dense messages (indices null: value t belongs to entry t) and Rand-k messages with
// shared indices (value t belongs to entry indices[t]). Row j's value t is at byte
// j * row_bytes + t * sizeof(T).
template <typename T>
void values_decode_add(T* h,                    // [n], updated in place
                       const int32_t* indices,  // [count] distinct, or null
                       int64_t count,
                       const uint8_t* gathered,  // [rows, row_bytes]
                       int64_t rows, int64_t row_bytes, DecodeRule rule, cudaStream_t stream);

}  // namespace efcomm::kernels
