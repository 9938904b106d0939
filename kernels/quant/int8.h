#pragma once
// int8: block-scaled integers in [-127, 127], 8 bits per entry (kernels/quant/scaled_integer.h).
#include "kernels/quant/scaled_integer.h"

namespace efcomm::quant {

struct Int8Codec : ScaledIntegerCodec<127, 8> {
  static constexpr const char* kName = "int8";
};

}  // namespace efcomm::quant
