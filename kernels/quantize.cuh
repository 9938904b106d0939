#pragma once
// Torch-free CUDA kernels of the blockwise quantizers, templated on the scheme's codec
// (kernels/quant_block.h; the registry: kernels/quant_schemes.h; the wire layout:
// kernels/wire_layout.h). Raw device pointers, 64-bit sizes, an explicit stream; T is float,
// __half or __nv_bfloat16. Launch failures throw std::runtime_error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/decode_rule.h"
#include "kernels/wire_layout.h"

namespace efcomm::kernels {

// Writes the message of d into `message` (layout.nbytes, 4-byte aligned): d_i = x_i, or
// T(float(x_i) - float(state_i)) with state, and then state_i += own.single(v_i), v_i the value of
// entry i's code. One warp per quantizer block (a grid of persistent warps): the block statistic
// in the canonical lane order (lane l holds entries 4l..4l+3 of every 128), then the codes, packed
// into words in registers (warp shuffles). Requires layout.bits <= 8.
template <typename T, typename Codec>
void quantize(const T* x,  // [numel]
              T* state,    // [numel], updated in place, or null
              const wire::QuantLayout& layout, int32_t levels, bool stochastic, uint64_t seed, uint64_t stream_id,
              DecodeRule own,    // own_message_rule(scale)
              uint8_t* message,  // [layout.nbytes]
              cudaStream_t stream);

// The decode rule (kernels/decode_rule.h) over `rows` gathered messages, each entry's value
// from the codec; any header bits decode as on the CPU. One thread per four entries: it reads
// their codes (one or two words) and the block header of every row, sums in rank order in
// registers, and updates h once. Requires layout.bits <= 8.
template <typename T, typename Codec>
void quant_decode_add(T* h,                     // [layout.numel], updated in place
                      const uint8_t* gathered,  // [rows, layout.nbytes]
                      int64_t rows, const wire::QuantLayout& layout, int32_t levels, DecodeRule rule,
                      cudaStream_t stream);

}  // namespace efcomm::kernels
