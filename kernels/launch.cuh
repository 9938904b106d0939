#pragma once
// Launch helpers shared by the kernel files.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace efcomm::kernels {

constexpr int kThreads = 256;

// Grid size for a grid-stride loop over n items: enough blocks to fill the GPU, capped
// so that 64-bit sizes never overflow the grid dimension.
inline unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8)));
}

// Throws for a failed CUDA runtime call (a CUB call, a memset), naming it.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("efcomm: ") + what + " failed: " + cudaGetErrorString(err));
  }
}

inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("efcomm: launching ") + kernel + " failed: " + cudaGetErrorString(err));
  }
}

// Grid size for persistent blocks: at most blocks_per_sm blocks per multiprocessor of the
// current device (the count is cached per device; a host query, not a synchronisation), and
// no more than there are units of work.
inline unsigned int resident_grid(int64_t work, int blocks_per_sm = 8) {
  constexpr int kMaxDevices = 64;
  static int sm_counts[kMaxDevices] = {};
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  if (device >= kMaxDevices) throw std::runtime_error("efcomm: more than 64 CUDA devices");
  if (sm_counts[device] == 0) {
    check_cuda(cudaDeviceGetAttribute(&sm_counts[device], cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute (multiprocessors)");
  }
  const int64_t cap = int64_t{sm_counts[device]} * blocks_per_sm;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(work, cap)));
}

}  // namespace efcomm::kernels
