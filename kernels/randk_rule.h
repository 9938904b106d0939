#pragma once
// Which k entries Rand-k keeps, defined here for the CPU reference and the CUDA kernels alike
// (torch-free, host and device). The draws come from the Philox stream of (seed, step, bucket),
// with the rank in the key only when each rank draws its own indices (kernels/counter_rng.h).
//
// window: k consecutive entries from a uniform offset, wrapping around; the offset is the first
//   two draws of the stream as one 64-bit number, modulo n.
// uniform: k distinct uniform entries without touching the other n - k: a keyed bijection pi of
//   [0, n), and the entries pi(0), ..., pi(k - 1), sorted ascending. pi is a balanced Feistel
//   network of kFeistelRounds rounds over [0, 4^h), 4^h the smallest power of four >= max(n, 256),
//   walked in cycles until it lands in [0, n) (a bijection of [0, n) since pi is one of [0, 4^h));
//   4^h < 4 max(n, 256), so a walk takes under four steps on average for n >= 256. Round r maps
//   (L, R) to (R, L ^ (mix(R ^ key_r) & (2^h - 1))), the keys the draws of Philox blocks 1 and 2 of
//   the stream (block 0 gives the window offset). Working over at least 256 entries keeps the round functions'
//   inputs wide enough for the subsets to be uniform on tiny tensors too (tested).
#include <cstdint>

#include "kernels/counter_rng.h"
#include "kernels/host_device.h"

namespace efcomm::randk {

constexpr int kFeistelRounds = 8;
constexpr int kMinHalfBits = 4;

EFCOMM_HD uint64_t window_offset(uint64_t seed, uint64_t stream, int64_t n) {
  const rng::Block draws = rng::draws4(seed, stream, 0);
  const uint64_t wide = (static_cast<uint64_t>(draws.w[0]) << 32) | draws.w[1];
  return wide % static_cast<uint64_t>(n);
}

// The t-th of the k window indices: in message order (offset + t) % n, or ascending (the order
// of a message that carries its indices).
EFCOMM_HD int64_t window_index(int64_t offset, int64_t n, int64_t k, int64_t t, bool ascending) {
  const int64_t wrapped = offset + k - n;  // how many indices wrap to the front, if positive
  if (!ascending || wrapped <= 0) return (offset + t) % n;
  return t < wrapped ? t : offset + (t - wrapped);
}

// A 32-bit integer hash (C. Wellons' lowbias32): the Feistel round function.
EFCOMM_HD uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

struct Permutation {
  uint32_t n;
  int half_bits;
  uint32_t keys[kFeistelRounds];

  EFCOMM_HD uint32_t feistel(uint32_t x) const {
    const uint32_t mask = (1u << half_bits) - 1u;
    uint32_t left = x >> half_bits;
    uint32_t right = x & mask;
    for (int r = 0; r < kFeistelRounds; ++r) {
      const uint32_t next = left ^ (mix(right ^ keys[r]) & mask);
      left = right;
      right = next;
    }
    return (left << half_bits) | right;
  }

  // pi(t) for t < n.
  EFCOMM_HD uint32_t operator()(uint32_t t) const {
    uint32_t x = feistel(t);
    while (x >= n) x = feistel(x);
    return x;
  }
};

EFCOMM_HD Permutation permutation(uint64_t seed, uint64_t stream, int64_t n) {
  Permutation p{};
  p.n = static_cast<uint32_t>(n);
  p.half_bits = kMinHalfBits;
  while ((int64_t{1} << (2 * p.half_bits)) < n) ++p.half_bits;
  for (int q = 0; q < kFeistelRounds / 4; ++q) {
    const rng::Block draws = rng::draws4(seed, stream, 1 + q);
    for (int w = 0; w < 4; ++w) p.keys[4 * q + w] = draws.w[w];
  }
  return p;
}

// Bits of the values pi takes (for a radix sort of them).
EFCOMM_HD int permutation_bits(const Permutation& p) {
  return 2 * p.half_bits;
}

}  // namespace efcomm::randk
