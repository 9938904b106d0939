#include "kernels/randk.cuh"

#include <cub/device/device_radix_sort.cuh>

#include "kernels/launch.cuh"

namespace efcomm::kernels {
namespace {

__global__ void permutation_kernel(randk::Permutation pi, int64_t k, uint32_t* __restrict__ keys) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[t] = pi(static_cast<uint32_t>(t));
  }
}

__global__ void window_kernel(int64_t offset, int64_t n, int64_t k, bool ascending, int32_t* __restrict__ out) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[t] = static_cast<int32_t>(randk::window_index(offset, n, k, t, ascending));
  }
}

size_t keys_bytes(int64_t k) {
  return (static_cast<size_t>(k) * sizeof(uint32_t) + 255) / 256 * 256;
}

size_t sort_bytes(int64_t k) {
  size_t bytes = 0;
  check_cuda(cub::DeviceRadixSort::SortKeys(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                            static_cast<uint32_t*>(nullptr), k, 0, 32),
             "cub::DeviceRadixSort::SortKeys (size query)");
  return bytes;
}

}  // namespace

size_t randk_uniform_workspace(int64_t k) {
  return keys_bytes(k) + sort_bytes(k);
}

void randk_uniform_indices(const randk::Permutation& pi, int64_t k, int32_t* out, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  if (workspace_bytes < randk_uniform_workspace(k)) {
    throw std::runtime_error("efcomm: randk_uniform_indices workspace too small");
  }
  auto* keys = static_cast<uint32_t*>(workspace);
  permutation_kernel<<<grid_for(k), kThreads, 0, stream>>>(pi, k, keys);
  check_launch("randk permutation");
  void* temp = static_cast<uint8_t*>(workspace) + keys_bytes(k);
  size_t temp_bytes = workspace_bytes - keys_bytes(k);
  // The values of pi are below 2^31 (they are < n): their bits are the int32 indices'.
  check_cuda(cub::DeviceRadixSort::SortKeys(temp, temp_bytes, keys, reinterpret_cast<uint32_t*>(out), k, 0,
                                            randk::permutation_bits(pi), stream),
             "cub::DeviceRadixSort::SortKeys (Rand-k indices)");
}

void randk_window_indices(int64_t offset, int64_t n, int64_t k, bool ascending, int32_t* out, cudaStream_t stream) {
  window_kernel<<<grid_for(k), kThreads, 0, stream>>>(offset, n, k, ascending, out);
  check_launch("randk window");
}

}  // namespace efcomm::kernels
