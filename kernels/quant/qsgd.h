#pragma once
// QSGD with s levels (Alistarh et al. 2017, arXiv 1610.02132), kernels/quant_block.h:
// header = ||x||_2 of the block (float32); t = |x_j| s / ||x||, l = floor(t) + [u < t - floor(t)];
// code = sign bit | l (1 + ceil(log2(s + 1)) bits); value = ||x|| * (l / s) * sign. Unbiased.
#include "kernels/quant_block.h"

namespace efcomm::quant {

struct QsgdCodec : CodecTraits<Statistic::kSumOfSquares, Rounding::kStochastic, 127> {
  static constexpr const char* kName = "qsgd";

  EFCOMM_HD static int level_bits(int32_t levels) {
    int bits = 0;
    while ((1 << bits) < levels + 1) ++bits;
    return bits;
  }

  EFCOMM_HD static int bits(int32_t levels) { return 1 + level_bits(levels); }

  EFCOMM_HD static uint32_t header(float stat, int64_t len) { return float_field(std::sqrt(stat)); }

  EFCOMM_HD static uint32_t encode(uint32_t header, float x, float u, bool stochastic, int32_t levels) {
    const float norm = float_of_field(header);
    if (!(norm > 0.0f) || !std::isfinite(norm) || !std::isfinite(x)) return 0;
    const auto s = static_cast<float>(levels);
    float t = (std::fabs(x) * s) / norm;
    if (t > s) t = s;
    float l = round_magnitude(t, u, true);
    if (l > s) l = s;
    const uint32_t negative = std::signbit(x) ? 1u : 0u;
    return (negative << level_bits(levels)) | static_cast<uint32_t>(l);
  }

  EFCOMM_HD static float decode(uint32_t header, uint32_t code, int32_t levels) {
    const int bits = level_bits(levels);
    const float level = static_cast<float>(code & ((1u << bits) - 1u)) / static_cast<float>(levels);
    const float v = float_of_field(header) * level;
    return (code >> bits) ? -v : v;
  }
};

}  // namespace efcomm::quant
