#pragma once
// Scaled sign (Karimireddy et al. 2019, arXiv 1901.09847), kernels/quant_block.h:
// header = ||x||_1 / len of the block (float32); 1 bit: 1 for a set sign bit; value = +-header.
// Deterministic, biased, contractive.
#include "kernels/quant_block.h"

namespace efcomm::quant {

struct SignCodec : CodecTraits<Statistic::kSumOfMagnitudes, Rounding::kNearest> {
  static constexpr const char* kName = "sign";

  EFCOMM_HD static int bits(int32_t) { return 1; }

  EFCOMM_HD static uint32_t header(float stat, int64_t len) { return float_field(stat / static_cast<float>(len)); }

  EFCOMM_HD static uint32_t encode(uint32_t, float x, float, bool, int32_t) { return std::signbit(x) ? 1u : 0u; }

  EFCOMM_HD static float decode(uint32_t header, uint32_t code, int32_t) {
    const float scale = float_of_field(header);
    return code ? -scale : scale;
  }
};

}  // namespace efcomm::quant
