#pragma once
// Torch-free CUDA kernels that write and read Top-k messages (layout: csrc/message_layout.h).
// Every entry point takes raw device pointers, 64-bit sizes and the stream to launch on;
// T is float, __half or __nv_bfloat16. Launch failures throw std::runtime_error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace efcomm::kernels {

// For t < k, with i = indices[t] and v = src[i]:
//   msg_values[t] = v;  msg_indices[t] = i;
//   if add_to:        add_to[i] = T(float(add_to[i]) + float(v))            (EF21's h_i += c)
//   if subtract_from: subtract_from[i] = T(float(subtract_from[i]) - float(v))  (EF's e -= c)
// add_to and subtract_from may be null, and subtract_from may alias src. The k indices must
// be distinct (they come from a Top-k selection).
template <typename T>
void pack_selected(const T* src,                     // [n]
                   const int32_t* indices,           // [k] distinct, in [0, n)
                   int64_t k,
                   T* add_to,                        // [n] or null
                   T* subtract_from,                 // [n] or null
                   T* msg_values,                    // [k]
                   int32_t* msg_indices,             // [k]
                   cudaStream_t stream);

// v[i] = T(float32(one_minus_eta * float(v[i])) + float32(eta * float(g[i]))) for i < n:
// the momentum of EF21-SGDM, each product and the sum rounded to float32.
template <typename T>
void momentum_update(T* v,                           // [n], updated in place
                     const T* g,                     // [n]
                     int64_t n,
                     float one_minus_eta,
                     float eta,
                     cudaStream_t stream);

// MoTEF's tracking step, per entry in float32 with every operation rounded on its own (the
// CPU reference's order): s = lam (g - M); M = T(M + s); V = T((V + s) + gamma (G_mean - G)).
template <typename T>
void motef_track(const T* g, T* M, T* V, const T* G, const T* G_mean, int64_t n, float lam, float gamma,
                 cudaStream_t stream);

// The deterministic decode of world sparse messages, gathered as rows of row_bytes bytes:
// values (T[k]) at byte 0 and indices (int32[k], ascending in every message, as every efcomm
// encoder writes them) at byte indices_offset. For every index i that some message names,
//
//     h[i] = T(float(h[i]) + float32(acc_i * scale)),  acc_i = sum over ranks j in order of
//            float32(weights[j] * float(value_j(i)))   (weights null: weight 1)
//
// every fp32 operation rounded on its own (never fused), as in the CPU reference; entries
// no message names are left untouched. No floating-point atomics: the index space is cut
// into tiles, a pass over the indices finds where each rank's entries of each tile begin
// (offsets, int32 [world, tiles + 1], from decode_workspace_ints), and one block per tile
// sums its ranks in rank order in shared memory. It reads each message once and touches h
// only where a message names it. Entries outside [0, n) are skipped; a message whose
// indices are not ascending is decoded partially (the CPU reference raises on both).
int64_t decode_tiles(int64_t n);
int64_t decode_workspace_ints(int64_t world, int64_t n);

template <typename T>
void sparse_decode_add(T* h,                         // [n], updated in place
                       int64_t n,
                       const uint8_t* gathered,      // [world, row_bytes]
                       int64_t world,
                       int64_t row_bytes,
                       int64_t indices_offset,
                       int64_t k,
                       const float* weights,         // [world] on the device, or null
                       float scale,
                       int32_t* workspace,           // [decode_workspace_ints(world, n)]
                       cudaStream_t stream);

}  // namespace efcomm::kernels
