#pragma once
// The storage type the CUDA kernels use for an ATen scalar type (same bits).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace efcomm {

template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<c10::Half> {
  using type = __half;
};
template <>
struct KernelType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
typename KernelType<T>::type* kernel_ptr(T* p) {
  return reinterpret_cast<typename KernelType<T>::type*>(p);
}
template <typename T>
const typename KernelType<T>::type* kernel_ptr(const T* p) {
  return reinterpret_cast<const typename KernelType<T>::type*>(p);
}

}  // namespace efcomm
