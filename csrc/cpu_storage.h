#pragma once
// The CPU's 16-bit storage types for kernels/storage.h: c10's conversions round to nearest even,
// as CUDA's do.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernels/storage.h"

namespace efcomm {

template <>
struct StorageTraits<c10::Half> {
  static constexpr Format kFormat = Format::kFloat16;
  static float to_float(c10::Half v) { return static_cast<float>(v); }
  static c10::Half from_float(float v) { return c10::Half(v); }
};

template <>
struct StorageTraits<c10::BFloat16> {
  static constexpr Format kFormat = Format::kBFloat16;
  static float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
  static c10::BFloat16 from_float(float v) { return c10::BFloat16(v); }
};

}  // namespace efcomm
