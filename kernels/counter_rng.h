#pragma once
// The counter-based generator behind every random choice in efcomm (Rand-k indices,
// stochastic rounding): Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random
// numbers: as easy as 1, 2, 3"), the generator of Random123, cuRAND and PyTorch. It is a pure
// function of (key, counter), so the CPU reference and the CUDA kernels draw the same bits,
// and any element's draw is computed without touching the others'.
//
// efcomm's use of it, defined here and nowhere else:
//   key      = the user's 64-bit seed (the same on every rank);
//   counter  = (e / 4, stream), stream = stream_id(step, bucket, purpose, rank);
//   draw(e)  = word e % 4 of philox4x32_10(counter, key): the 32-bit draw of element e.
// This is at::philox_engine(seed, /*subsequence=*/stream, /*offset=*/e / 4) of PyTorch
// (tested against it). Where ranks must agree (Rand-k indices) rank is kSharedRank; where
// they must differ (stochastic rounding) it is the rank.
// Header-only, torch-free, usable from host code and from CUDA device code.
#include <cstdint>

#include "kernels/host_device.h"

namespace efcomm::rng {

struct Block {
  uint32_t w[4];
};

// What a stream of draws is used for: part of its key, so two uses never share draws.
enum Purpose : uint64_t {
  kRandKIndices = 1,
  kStochasticRounding = 2,
};

constexpr uint64_t kSharedRank = ~uint64_t{0};

EFCOMM_HD Block philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key);
  uint32_t k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Block{{c0, c1, c2, c3}};
}

// The four draws of elements 4q .. 4q + 3.
EFCOMM_HD Block draws4(uint64_t seed, uint64_t stream, uint64_t q) {
  return philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32), static_cast<uint32_t>(stream),
                       static_cast<uint32_t>(stream >> 32), seed);
}

EFCOMM_HD uint32_t draw(uint64_t seed, uint64_t stream, uint64_t e) {
  return draws4(seed, stream, e / 4).w[e % 4];
}

// A uniform float in [0, 1) on the grid of 2^-24 (exact in float32).
EFCOMM_HD float to_unit_float(uint32_t bits) {
  return static_cast<float>(bits >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

EFCOMM_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The 64-bit stream of one (step, bucket, purpose, rank); computed on the host.
EFCOMM_HD uint64_t stream_id(uint64_t step, uint64_t bucket, uint64_t purpose, uint64_t rank) {
  return splitmix64(splitmix64(splitmix64(splitmix64(step) ^ bucket) ^ purpose) ^ rank);
}

// Stochastic rounding draws differ per rank.
EFCOMM_HD uint64_t rounding_stream(int64_t step, int64_t bucket, int64_t rank) {
  return stream_id(static_cast<uint64_t>(step), static_cast<uint64_t>(bucket), kStochasticRounding,
                   static_cast<uint64_t>(rank));
}

// Rand-k indices: shared by every rank (rank < 0), or keyed by the rank (independent indices).
EFCOMM_HD uint64_t randk_stream(int64_t step, int64_t bucket, int64_t rank) {
  return stream_id(static_cast<uint64_t>(step), static_cast<uint64_t>(bucket), kRandKIndices,
                   rank < 0 ? kSharedRank : static_cast<uint64_t>(rank));
}

}  // namespace efcomm::rng
