#include "kernels/dense_message.cuh"

#include "kernels/decode_positions.cuh"
#include "kernels/launch.cuh"

namespace efcomm::kernels {
namespace {

template <typename T>
__global__ void dense_encode_kernel(const T* __restrict__ a, const T* sub, T* update, int64_t n,
                                    const float* __restrict__ factor, DecodeRule own, T* __restrict__ msg_values) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = sub != nullptr ? load(store<T>(load(a[i]) - load(sub[i]))) : load(a[i]);
    const T c = store<T>(factor != nullptr ? d * *factor : d);
    msg_values[i] = c;
    if (update != nullptr) update[i] = add_decoded(update[i], own.single(load(c)));
  }
}

}  // namespace

template <typename T>
void dense_encode(const T* a, const T* sub, T* update, int64_t n, const float* factor, DecodeRule own, T* msg_values,
                  cudaStream_t stream) {
  dense_encode_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(a, sub, update, n, factor, own, msg_values);
  check_launch("dense_encode");
}

template <typename T>
void values_decode_add(T* h, const int32_t* indices, int64_t count, const uint8_t* gathered, int64_t rows,
                       int64_t row_bytes, DecodeRule rule, cudaStream_t stream) {
  decode_positions(h, ValueRows<T, int32_t>{gathered, row_bytes, indices}, count, rows, rule, stream,
                   "values_decode_add");
}

#define EFCOMM_INSTANTIATE(T)                                                                                   \
  template void dense_encode<T>(const T*, const T*, T*, int64_t, const float*, DecodeRule, T*, cudaStream_t);   \
  template void values_decode_add<T>(T*, const int32_t*, int64_t, const uint8_t*, int64_t, int64_t, DecodeRule, \
                                     cudaStream_t);

EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
