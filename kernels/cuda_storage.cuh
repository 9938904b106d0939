#pragma once
// The CUDA storage types of the 16-bit formats (same bits as c10::Half / c10::BFloat16), for
// kernels/storage.h: conversions round to nearest even, as on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/storage.h"

namespace efcomm {

template <>
struct StorageTraits<__half> {
  static constexpr Format kFormat = Format::kFloat16;
  EFCOMM_HD static float to_float(__half v) { return __half2float(v); }
  EFCOMM_HD static __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct StorageTraits<__nv_bfloat16> {
  static constexpr Format kFormat = Format::kBFloat16;
  EFCOMM_HD static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  EFCOMM_HD static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

}  // namespace efcomm
