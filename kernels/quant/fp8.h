#pragma once
// fp8 (e4m3, OCP "fn" variant, max 448), kernels/quant_block.h: header = max|x_j| / 448
// (float32); x_j / header rounded to the e4m3 grid (nearest-even, or stochastic between its two
// neighbours); value = e4m3 * header.
#include "kernels/quant_block.h"

namespace efcomm::quant {

struct Fp8Codec : CodecTraits<Statistic::kMaxMagnitude, Rounding::kEither> {
  static constexpr const char* kName = "fp8";
  static constexpr float kMax = 448.0f;

  // The code of a magnitude a in [0, 448] (already scaled), rounded.
  EFCOMM_HD static uint32_t magnitude_code(float a, float u, bool stochastic) {
    if (a == 0.0f) return 0;
    int e = std::ilogb(a);
    if (e < -6) e = -6;  // subnormal range: fixed spacing 2^-9
    const float ulp = std::ldexp(1.0f, e - 3);
    float m = round_magnitude(a / ulp, u, stochastic);  // a / ulp is exact (power of two)
    if (m >= 16.0f) {                                   // rounded up into the next binade
      m = 8.0f;
      e += 1;
    }
    if (e > 8 || (e == 8 && m > 14.0f)) return 0x7E;  // clamp to 448 = 1.75 * 2^8
    if (m < 8.0f) return static_cast<uint32_t>(m);    // subnormal (e == -6): exponent field 0
    return static_cast<uint32_t>((e + 7) << 3) | static_cast<uint32_t>(m - 8.0f);
  }

  EFCOMM_HD static float magnitude(uint32_t code) {
    const int exponent = static_cast<int>((code >> 3) & 0xF);
    const int mantissa = static_cast<int>(code & 7);
    if (exponent == 0) return std::ldexp(static_cast<float>(mantissa), -9);
    return std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  }

  EFCOMM_HD static int bits(int32_t) { return 8; }

  EFCOMM_HD static uint32_t header(float stat, int64_t) { return float_field(stat / kMax); }

  EFCOMM_HD static uint32_t encode(uint32_t header, float x, float u, bool stochastic, int32_t) {
    const float scale = float_of_field(header);
    if (!(scale > 0.0f) || !std::isfinite(scale) || !std::isfinite(x)) return 0;
    float a = std::fabs(x) / scale;
    if (a > kMax) a = kMax;
    const uint32_t code = magnitude_code(a, u, stochastic);
    const uint32_t negative = std::signbit(x) ? 1u : 0u;
    return code == 0 ? 0 : (negative << 7) | code;
  }

  EFCOMM_HD static float decode(uint32_t header, uint32_t code, int32_t) {
    const float v = magnitude(code & 0x7F) * float_of_field(header);
    return (code & 0x80) ? -v : v;
  }
};

}  // namespace efcomm::quant
