#pragma once
// Threshold Top-k: the constants of the hint that the Top-k ops carry from one call to the
// next (their `threshold` argument, float32[2] on x's device), shared by the CPU reference
// (csrc/cpu_ops.cpp) and the CUDA path (kernels/topk_select.cu).
//
//   hint[0]  tau: the entries with |x| >= tau (and NaNs) are the candidates; 0 means none
//            given (every entry is a candidate)
//   hint[1]  1 when the last call fell back to the two-pass select, else 0
//
// The selection itself is always the exact Top-k. With count = #candidates and
// cap = min(n, kTopkHintCapFactor * k): when k <= count <= cap the candidates hold the
// Top-k, and the CUDA path selects it from them after a single pass over x (no histogram
// pass); otherwise it falls back to the two-pass radix select. Either way the op writes
// the next hint: tau = float32(kTopkHintMargin * |k-th largest|) when that is finite and
// positive, else 0.
#include <cstdint>

namespace efcomm::kernels {

constexpr float kTopkHintMargin = 0.95f;
constexpr int64_t kTopkHintCapFactor = 4;

}  // namespace efcomm::kernels
