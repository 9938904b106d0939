#pragma once
// int4: block-scaled integers in [-7, 7], 4 bits per entry (kernels/quant/scaled_integer.h):
// header = max|x_j| / 7, code = round(x_j / header), nearest-even or stochastic.
#include "kernels/quant/scaled_integer.h"

namespace efcomm::quant {

struct Int4Codec : ScaledIntegerCodec<7, 4> {
  static constexpr const char* kName = "int4";
};

}  // namespace efcomm::quant
