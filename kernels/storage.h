#pragma once
// How efcomm reads and writes a value of a gradient-like tensor (float32, bfloat16 or float16),
// shared by the CPU reference and the CUDA kernels. Torch-free, host and device.
//
// The canonical NaN (issues 10 and 11): every NaN an op writes (message values, quantizer
// headers, states, decoded results) is the quiet NaN with a clear sign and an empty payload,
//   float32 0x7FC00000, bfloat16 0x7FC0, float16 0x7E00,
// whatever NaN the arithmetic produced (x86 makes 0xFFC00000 of inf - inf, CUDA 0x7FFFFFFF),
// so that the CPU and the GPU, and ranks on different hardware, write the same bits.
//
// Each layer names its 16-bit storage types by specialising StorageTraits<T> with the format
// and the float conversions (round to nearest even): __half and __nv_bfloat16 in
// kernels/cuda_storage.cuh, c10::Half and c10::BFloat16 in csrc/cpu_storage.h.
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace efcomm {

enum class Format { kFloat32, kBFloat16, kFloat16 };

EFCOMM_HD constexpr uint32_t canonical_nan_bits(Format format) {
  return format == Format::kFloat32 ? 0x7FC00000u : format == Format::kBFloat16 ? 0x7FC0u : 0x7E00u;
}

EFCOMM_HD constexpr uint32_t infinity_bits(Format format) {
  return format == Format::kFloat32 ? 0x7F800000u : format == Format::kBFloat16 ? 0x7F80u : 0x7C00u;
}

template <typename T>
struct StorageTraits;

template <>
struct StorageTraits<float> {
  static constexpr Format kFormat = Format::kFloat32;
  EFCOMM_HD static float to_float(float v) { return v; }
  EFCOMM_HD static float from_float(float v) { return v; }
};

// The T whose bits are the low 8 * sizeof(T) bits of `bits`.
template <typename T>
EFCOMM_HD T from_bits(uint32_t bits) {
  T value;
  if constexpr (sizeof(T) == 4) {
    std::memcpy(&value, &bits, 4);
  } else {
    const auto narrow = static_cast<uint16_t>(bits);
    std::memcpy(&value, &narrow, 2);
  }
  return value;
}

template <typename T>
EFCOMM_HD T canonical_nan() {
  return from_bits<T>(canonical_nan_bits(StorageTraits<T>::kFormat));
}

template <typename T>
EFCOMM_HD float load(T v) {
  return StorageTraits<T>::to_float(v);
}

// v written as a T: rounded to nearest even, any NaN as the canonical one. Every value an op
// writes goes through here.
template <typename T>
EFCOMM_HD T store(float v) {
  return v != v ? canonical_nan<T>() : StorageTraits<T>::from_float(v);
}

// The bits of a float32 field of a message (a quantizer header), NaN canonical.
EFCOMM_HD uint32_t float_field(float v) {
  const float canonical = store<float>(v);
  uint32_t bits;
  std::memcpy(&bits, &canonical, 4);
  return bits;
}

EFCOMM_HD float float_of_field(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

}  // namespace efcomm
