// The CUB DeviceTopK baseline of benchmarks/bench_ops.py (CCCL 3.2+; the toolkit's CCCL may
// be older: bench_ops.py builds this against the headers of the nvidia-cuda-cccl wheel).
// Top-k by magnitude of x, or of g - h for the EF21 encode, with the same keys efcomm ranks
// (never materialised: a transform iterator), then the sign-carrying values gathered and, for
// the encode, h += c scattered. DeviceTopK's fast mode is unordered and not deterministic
// among ties, the mode it supports; efcomm's order and tie rule are stricter.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cub/device/device_topk.cuh>
#include <cuda/__execution/require.h>
#include <cuda/iterator>

namespace {

struct Magnitude {
  const float* a;
  const float* b;  // null: |a|
  __device__ float operator()(int64_t i) const { return fabsf(b == nullptr ? a[i] : __fsub_rn(a[i], b[i])); }
};

__global__ void gather_kernel(const float* a, float* b, const int64_t* idx, int64_t k, float* values) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx[t];
    if (b == nullptr) {
      values[t] = a[i];
    } else {
      const float d = __fsub_rn(a[i], b[i]);
      values[t] = d;
      b[i] = __fadd_rn(b[i], d);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& a, const at::Tensor* b, int64_t k) {
  TORCH_CHECK(a.is_cuda() && a.scalar_type() == at::kFloat && a.is_contiguous(), "cub_topk: float32 CUDA x");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto keys = cuda::make_transform_iterator(cuda::counting_iterator<int64_t>(0),
                                            Magnitude{a.const_data_ptr<float>(), b ? b->data_ptr<float>() : nullptr});
  auto ids = cuda::counting_iterator<int64_t>(0);
  at::Tensor keys_out = at::empty({k}, a.options());
  at::Tensor indices = at::empty({k}, a.options().dtype(at::kLong));
  auto env = cuda::execution::require(cuda::execution::determinism::not_guaranteed,
                                      cuda::execution::output_ordering::unsorted);
  size_t bytes = 0;
  cub::DeviceTopK::MaxPairs(nullptr, bytes, keys, keys_out.data_ptr<float>(), ids, indices.data_ptr<int64_t>(), n, k,
                            env);
  at::Tensor temp = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
  const cudaError_t err = cub::DeviceTopK::MaxPairs(temp.data_ptr(), bytes, keys, keys_out.data_ptr<float>(), ids,
                                                    indices.data_ptr<int64_t>(), n, k,
                                                    cuda::std::execution::env{cuda::stream_ref{stream}, env});
  TORCH_CHECK(err == cudaSuccess, "cub::DeviceTopK::MaxPairs failed: ", cudaGetErrorString(err));
  at::Tensor values = at::empty({k}, a.options());
  const int blocks = static_cast<int>(std::min<int64_t>((k + 255) / 256, 4096));
  gather_kernel<<<std::max(blocks, 1), 256, 0, stream>>>(a.const_data_ptr<float>(), b ? b->data_ptr<float>() : nullptr,
                                                         indices.const_data_ptr<int64_t>(), k,
                                                         values.data_ptr<float>());
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> cub_topk(const at::Tensor& x, int64_t k) {
  return run(x, nullptr, k);
}

std::tuple<at::Tensor, at::Tensor> cub_ef21_encode(const at::Tensor& g, at::Tensor h, int64_t k) {
  return run(g, &h, k);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("topk", &cub_topk, "Top-k by magnitude with cub::DeviceTopK (unordered)");
  m.def("ef21_encode", &cub_ef21_encode, "c = TopK(g - h) with cub::DeviceTopK, h += c");
}
