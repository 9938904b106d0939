#pragma once
// The rules of the sync-free exact Top-k select (EFCOMM_TOPK_SELECT=radix2, kernels/topk_radix.cu),
// written once for its CUDA kernels and for the host emulation that tests them on the CPU
// (tests/cpp/test_topk_radix.cpp). Torch-free, host and device.
//
// The order is the CPU reference's (csrc/topk_cpu.cpp): larger magnitude first, every NaN above
// +inf, ties to the lower index.
//
// Key: the bits of a value's magnitude (IEEE formats order magnitudes by their bits), every NaN
// the largest key: float32 31 bits, bfloat16 and float16 15 bits.
// Digits: kDigitBits from the top of the key; float32 11 + 11 + 9 bits (3 passes), 16-bit formats
// 11 + 4 (2 passes). Pass p counts, among the entries whose top bits match the prefix decided so
// far, how many have each digit p, and the bin where the count from the top reaches k_rem decides
// digit p of the k-th largest key (advance). The selection is fixed once the bin holds exactly the
// entries still to take (early stop: len == k_rem) or every bit is decided.
// Selection: an entry is taken when its top `decided` key bits exceed the prefix, or equal it and
// fewer than k_rem entries of lower index also equal it (ties to the lower index). Written in
// index order: the entry's output position is (#above before it) + min(#ties before it, k_rem).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"
#include "kernels/storage.h"
#include "kernels/topk_hint.h"

namespace efcomm::topk_radix {

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;

template <typename T>
EFCOMM_HD constexpr int key_bits() {
  return 8 * static_cast<int>(sizeof(T)) - 1;
}

// The key of v: its magnitude's bits, every NaN the largest key (all key bits set).
template <typename T>
EFCOMM_HD uint32_t key_of(T v) {
  uint32_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  const uint32_t mask = (1u << key_bits<T>()) - 1u;
  const uint32_t magnitude = raw & mask;
  return magnitude > infinity_bits(StorageTraits<T>::kFormat) ? mask : magnitude;
}

// The magnitude a key stands for, as a float (NaN for the NaN key).
template <typename T>
EFCOMM_HD float magnitude_of(uint32_t key) {
  return load(from_bits<T>(key));
}

// Which bits each pass decides, for keys of key_bits bits.
struct Plan {
  int key_bits;
  int passes;

  // Key bits decided after pass p (0 before pass 0, p = -1).
  EFCOMM_HD int decided_after(int p) const {
    const int bits = kDigitBits * (p + 1);
    return bits < key_bits ? bits : key_bits;
  }
  EFCOMM_HD int digit_bits(int p) const { return decided_after(p) - decided_after(p - 1); }

  // The top `decided` bits of key (0 when none are decided).
  EFCOMM_HD uint32_t top(uint32_t key, int decided) const { return decided == 0 ? 0u : key >> (key_bits - decided); }
  EFCOMM_HD uint32_t digit(uint32_t key, int p) const {
    return top(key, decided_after(p)) & ((1u << digit_bits(p)) - 1u);
  }
};

EFCOMM_HD constexpr Plan plan_for(int key_bits) {
  return Plan{key_bits, (key_bits + kDigitBits - 1) / kDigitBits};
}

// What the passes know of the k-th largest key; counts fit 32 bits (n < 2^31).
struct State {
  uint32_t prefix;           // the top `decided` bits of the k-th largest key
  int32_t decided;           // how many key bits are decided
  uint32_t k_rem;            // entries still to take among those whose top bits equal prefix
  uint32_t len;              // entries whose top bits equal prefix
  uint32_t done;             // 1: the selection is fixed; the remaining passes do nothing
  uint32_t from_candidates;  // 1: the candidate buffer holds, in index order, every entry that
                             //    can be selected (`candidates` of them): read it, not the input
  uint32_t candidates;
  uint32_t compact_next;  // 1: the next pass also writes the entries at or above the prefix
                          //    (they fit the buffer) to the candidate buffer
  uint32_t fell_back;     // 1: a hint was given and its candidates did not hold the Top-k
};

EFCOMM_HD State initial_state(int64_t k) {
  return State{0u, 0, static_cast<uint32_t>(k), 0u, 0u, 0u, 0u, 0u, 0u};
}

// The bin holds the k-th of the entries being ranked: `above` of them rank in higher bins.
EFCOMM_HD bool holds_kth(uint32_t above, uint32_t count, uint32_t k_rem) {
  return above < k_rem && k_rem - above <= count;
}

// After pass p found the k-th in bin `bucket` (count entries there, `above` in higher bins).
// `cap`: the candidate buffer's capacity; pass 0 over the input schedules its compaction.
EFCOMM_HD void advance(State& s, const Plan& plan, int p, uint32_t bucket, uint32_t above, uint32_t count,
                       uint32_t cap) {
  s.prefix = (s.prefix << plan.digit_bits(p)) | bucket;
  s.decided = plan.decided_after(p);
  s.k_rem -= above;
  s.len = count;
  s.done = count == s.k_rem || s.decided == plan.key_bits ? 1u : 0u;
  s.compact_next = p == 0 && !s.from_candidates && !s.done && above + count <= cap ? 1u : 0u;
  if (s.compact_next) s.candidates = above + count;  // what pass 1 will write
}

// From now on the kernels read the candidate buffer: `count` entries, in index order (the
// hinted pass's, or pass 1's compaction of s.candidates entries).
EFCOMM_HD void use_candidates(State& s, uint32_t count) {
  s.from_candidates = 1u;
  s.candidates = count;
  s.compact_next = 0u;
}

enum Rank : int { kBelow = 0, kTie = 1, kAbove = 2 };

EFCOMM_HD Rank rank_of(const Plan& plan, const State& s, uint32_t key) {
  const uint32_t t = plan.top(key, s.decided);
  return t > s.prefix ? kAbove : t == s.prefix ? kTie : kBelow;
}

// Whether an entry of this rank is taken, and where it goes, given how many entries of lower
// index rank above and tie.
EFCOMM_HD bool taken(Rank r, uint32_t ties_before, uint32_t k_rem) {
  return r == kAbove || (r == kTie && ties_before < k_rem);
}
EFCOMM_HD uint32_t position(uint32_t above_before, uint32_t ties_before, uint32_t k_rem) {
  return above_before + (ties_before < k_rem ? ties_before : k_rem);
}

// The hinted path's candidates (kernels/topk_hint.h): NaN, or a magnitude of at least tau.
EFCOMM_HD bool reaches_hint(float v, float tau) {
  return v != v || std::fabs(v) >= tau;
}

// Whether the candidates (count of them, at most cap kept) hold the Top-k.
EFCOMM_HD bool hint_holds(uint32_t count, int64_t k, int64_t cap) {
  return k <= static_cast<int64_t>(count) && static_cast<int64_t>(count) <= cap;
}

// The next call's tau from the k-th largest magnitude.
EFCOMM_HD float next_hint(float kth_magnitude) {
  const float next = kernels::kTopkHintMargin * kth_magnitude;
  return std::isfinite(next) && next > 0.0f ? next : 0.0f;
}

// The candidate buffer's capacity: the hint's bound (kernels/topk_hint.h).
EFCOMM_HD int64_t candidate_capacity(int64_t n, int64_t k) {
  const int64_t cap = kernels::kTopkHintCapFactor * k;
  return cap < n ? cap : n;
}

}  // namespace efcomm::topk_radix
