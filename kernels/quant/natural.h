#pragma once
// Natural compression (Horvath et al. 2019, arXiv 1905.10988), kernels/quant_block.h:
// header = base = 1 + max_j floor(log2|x_j|) (int32; kNonFiniteBase for a block holding NaN or
// inf); |x_j| in [2^e, 2^(e+1)) becomes 2^(e+1) with probability |x_j|/2^e - 1, else 2^e;
// code = sign bit | (base + 1 - e') for a result 2^e' (7 bits, e' >= base - 126; smaller
// magnitudes round between 0 and 2^(base - 126), unbiased); 0 codes zero. Unbiased.
#include "kernels/quant_block.h"

namespace efcomm::quant {

struct NaturalCodec : CodecTraits<Statistic::kMaxExponent, Rounding::kStochastic> {
  static constexpr const char* kName = "natural";
  static constexpr int32_t kNonFiniteBase = INT32_MIN;

  EFCOMM_HD static int bits(int32_t) { return 8; }

  EFCOMM_HD static uint32_t header(float stat, int64_t) {
    int32_t base = 0;  // an all-zero block: any base, every code is 0
    if (!std::isfinite(stat) && !(stat < 0.0f))
      base = kNonFiniteBase;  // NaN or +inf
    else if (std::isfinite(stat))
      base = static_cast<int32_t>(stat) + 1;
    return static_cast<uint32_t>(base);
  }

  EFCOMM_HD static uint32_t encode(uint32_t header, float x, float u, bool, int32_t) {
    const auto base = static_cast<int32_t>(header);
    if (base == kNonFiniteBase || x == 0.0f || !std::isfinite(x)) return 0;
    const float a = std::fabs(x);
    int e = std::ilogb(a);
    const float low = std::ldexp(1.0f, e);
    if (u < (a - low) / low) e += 1;  // a - low is exact; dividing by a power of two too
    if (e < base - 126) {             // below the smallest code: 0 or 2^(base - 126)
      const float smallest = std::ldexp(1.0f, base - 126);
      if (!(u < a / smallest)) return 0;
      e = base - 126;
    }
    const uint32_t negative = std::signbit(x) ? 1u : 0u;
    return (negative << 7) | static_cast<uint32_t>(base + 1 - e);
  }

  // Any header: the exponent is formed in 64 bits and clamped far outside float32's range
  // (where ldexp gives 0 or inf on every device), so no header bits overflow it.
  EFCOMM_HD static float decode(uint32_t header, uint32_t code, int32_t) {
    const auto base = static_cast<int32_t>(header);
    if (base == kNonFiniteBase) return NAN;
    if ((code & 0x7F) == 0) return 0.0f;
    int64_t exponent = static_cast<int64_t>(base) + 1 - static_cast<int64_t>(code & 0x7F);
    exponent = exponent < -1000 ? -1000 : exponent > 1000 ? 1000 : exponent;
    const float v = std::ldexp(1.0f, static_cast<int>(exponent));
    return (code & 0x80) ? -v : v;
  }
};

}  // namespace efcomm::quant
