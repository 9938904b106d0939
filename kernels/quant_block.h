#pragma once
// What every blockwise quantizer shares (torch-free, host and device). A scheme is a small
// codec struct in kernels/quant/, registered in kernels/quant_schemes.h:
//
//   kName        its name in the ops' `scheme` argument
//   kStatistic   the per-block statistic its header is made of (below)
//   kRounding    stochastic, nearest, or either (the ops' `stochastic` argument chooses)
//   kMaxLevels   0 when it takes no levels; else `levels` must be in [1, kMaxLevels]
//   bits(levels)                                bits per entry on the wire (at most 16)
//   header(stat, len)                           a block's 4-byte header, from its statistic
//                                               over its len entries
//   encode(header, x, u, stochastic, levels)    entry x's code; u is its uniform draw in [0, 1)
//                                               (kernels/counter_rng.h, keyed by the rank)
//   decode(header, code, levels)                a code's value, for any header bits
//
// The CPU reference (csrc/quant_cpu.cpp) and the CUDA kernels (kernels/quantize.cu) are
// templated on the codec, so a code means the same on both. A block holding inf or NaN gets a
// non-finite header, and every value decoded from it is NaN or inf: non-finite input is never
// silently dropped. Float headers are written with float_field (kernels/storage.h): NaN
// canonical.
//
// Block statistics follow one order on every device: entry e of the block goes to lane
// (e / 4) % 32, each lane combines its entries in index order in float32, then the lanes combine
// as a tree, lane t with lane t + o for o = 16, 8, 4, 2, 1. Sums are float32 additions; maxima
// keep NaN.
#include <cmath>
#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/storage.h"
#include "kernels/wire_layout.h"

namespace efcomm::quant {

enum class Statistic { kSumOfSquares, kSumOfMagnitudes, kMaxMagnitude, kMaxExponent };
enum class Rounding { kStochastic, kNearest, kEither };

constexpr int kLanes = 32;
EFCOMM_HD int lane_of(int64_t e) {
  return static_cast<int>((e / 4) % kLanes);
}

// max that keeps NaN (a NaN anywhere makes the block's max NaN).
EFCOMM_HD float nan_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

template <Statistic S>
EFCOMM_HD float stat_identity() {
  return S == Statistic::kMaxExponent ? -INFINITY : 0.0f;
}

// The contribution of one entry to its block's statistic. kMaxExponent: the exponent
// floor(log2|x|), carried in a float (exact); -inf for 0; NaN kept, +inf for inf.
template <Statistic S>
EFCOMM_HD float stat_term(float x) {
  if constexpr (S == Statistic::kSumOfSquares) return x * x;
  if constexpr (S == Statistic::kMaxExponent) {
    if (x == 0.0f) return -INFINITY;
    if (!std::isfinite(x)) return x != x ? x : INFINITY;
    return static_cast<float>(std::ilogb(x));
  }
  return std::fabs(x);
}

template <Statistic S>
EFCOMM_HD float stat_combine(float a, float b) {
  if constexpr (S == Statistic::kSumOfSquares || S == Statistic::kSumOfMagnitudes) return a + b;
  return nan_max(a, b);
}

// A codec's fixed properties (the interface above).
template <Statistic S, Rounding R, int32_t MaxLevels = 0>
struct CodecTraits {
  static constexpr Statistic kStatistic = S;
  static constexpr Rounding kRounding = R;
  static constexpr int32_t kMaxLevels = MaxLevels;
};

// floor(t) + [u < t - floor(t)] (stochastic, for 0 <= t < 2^23), or nearest-even.
EFCOMM_HD float round_magnitude(float t, float u, bool stochastic) {
  if (!stochastic) return std::rint(t);
  const float low = std::floor(t);
  return u < t - low ? low + 1.0f : low;
}

// The gathered quantized messages, read for the decode rule (kernels/decode_rule.h): value j
// at i is what entry i's code in row j decodes to.
template <typename Codec>
struct QuantRows {
  const uint8_t* gathered;
  wire::QuantLayout layout;
  int32_t levels;

  EFCOMM_HD float value(int64_t j, int64_t i) const {
    const uint8_t* row = gathered + j * layout.nbytes;
    return Codec::decode(wire::read_header(row, i / layout.block), wire::read_code(row, layout, i), levels);
  }
  EFCOMM_HD int64_t index(int64_t i) const { return i; }
};

}  // namespace efcomm::quant
