#pragma once
// Block-scaled integers (the int8 and int4 schemes), kernels/quant_block.h:
// header = max|x_j| / kMaxCode (float32); code = round(x_j / header) in [-kMaxCode, kMaxCode]
// (nearest-even, or stochastic: floor + [u < frac]) as a kBits-bit two's complement integer;
// value = code * header. Nearest: biased and contractive; stochastic: unbiased.
#include "kernels/quant_block.h"

namespace efcomm::quant {

template <int kMaxCode, int kBits>
struct ScaledIntegerCodec : CodecTraits<Statistic::kMaxMagnitude, Rounding::kEither> {
  EFCOMM_HD static int bits(int32_t) { return kBits; }

  EFCOMM_HD static uint32_t header(float stat, int64_t) { return float_field(stat / static_cast<float>(kMaxCode)); }

  EFCOMM_HD static uint32_t encode(uint32_t header, float x, float u, bool stochastic, int32_t) {
    const float scale = float_of_field(header);
    if (!(scale > 0.0f) || !std::isfinite(scale) || !std::isfinite(x)) return 0;
    float q = round_magnitude(std::fabs(x) / scale, u, stochastic);
    if (q > static_cast<float>(kMaxCode)) q = static_cast<float>(kMaxCode);
    const int32_t v = std::signbit(x) ? -static_cast<int32_t>(q) : static_cast<int32_t>(q);
    return static_cast<uint32_t>(v) & ((1u << kBits) - 1u);
  }

  EFCOMM_HD static float decode(uint32_t header, uint32_t code, int32_t) {
    const int32_t v = static_cast<int32_t>(code << (32 - kBits)) >> (32 - kBits);  // sign-extended
    return static_cast<float>(v) * float_of_field(header);
  }
};

}  // namespace efcomm::quant
