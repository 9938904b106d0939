#pragma once
// The CUDA side of the decode rule (kernels/decode_rule.h) for the families whose rows hold their
// values at the same positions (dense, Rand-k with shared indices): one thread per position,
// grid-stride, the rows summed in rank order in registers. The reader (ValueRows) says where row
// j's value t is. (The quantizers decode four entries per thread: kernels/quantize.cu.)
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda_storage.cuh"
#include "kernels/decode_rule.h"
#include "kernels/launch.cuh"

namespace efcomm::kernels {

template <typename T, typename Reader>
__global__ void decode_positions_kernel(T* h, Reader reader, int64_t count, int64_t rows, DecodeRule rule) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    decode_position(h, reader, t, rows, rule);
  }
}

// h[reader.index(t)] for t < count, by the decode rule over `rows` rows.
template <typename T, typename Reader>
void decode_positions(T* h, const Reader& reader, int64_t count, int64_t rows, const DecodeRule& rule,
                      cudaStream_t stream, const char* name) {
  if (count == 0) return;
  decode_positions_kernel<T, Reader><<<grid_for(count), kThreads, 0, stream>>>(h, reader, count, rows, rule);
  check_launch(name);
}

}  // namespace efcomm::kernels
