#pragma once
// How the quantizer kernels (kernels/quantize.cu) move codes between registers and the wire
// layout of kernels/wire_layout.h, written once for the kernels and a CPU test that holds them to
// wire::write_code and wire::read_code. Torch-free, host and device; bits per entry at most 8.
//
// A warp sweeps a quantizer block 128 entries at a time; lane l holds entries 4l..4l+3 of the
// sweep as one group of 4 * bits bits (entry 4l + q at bits [q * bits, (q + 1) * bits)). The
// sweep's codes are 4 * bits words (fewer for the last sweep of a block shorter than 128), word w
// holding bits [32 w, 32 w + 32): its bits come from lanes first_lane(w) .. last_lane(w).
#include <cstdint>

#include "kernels/host_device.h"

namespace efcomm::quant {

EFCOMM_HD int first_lane(int word, int bits) {
  return 32 * word / (4 * bits);
}
EFCOMM_HD int last_lane(int word, int bits) {
  return (32 * word + 31) / (4 * bits);
}

// How many lanes a word may draw on, at most (the loop bound of the warp's gather).
EFCOMM_HD int lanes_per_word(int bits) {
  return (32 + 4 * bits - 1) / (4 * bits) + 1;
}

// Lane l's group, placed in word w (the bits of it that fall there).
EFCOMM_HD uint32_t word_part(uint32_t group, int l, int word, int bits) {
  const int shift = 4 * bits * l - 32 * word;
  return shift >= 0 ? group << shift : group >> -shift;
}

// The group of 4 * bits bits that starts at bit `bit` of words (it may straddle two words).
EFCOMM_HD uint32_t read_group(const uint32_t* words, int64_t bit, int bits) {
  const uint32_t* first = words + bit / 32;
  const int shift = static_cast<int>(bit % 32);
  uint64_t pair = first[0];
  if (shift + 4 * bits > 32) pair |= static_cast<uint64_t>(first[1]) << 32;
  return static_cast<uint32_t>(pair >> shift);
}

// Code q of a group.
EFCOMM_HD uint32_t code_of(uint32_t group, int q, int bits) {
  return (group >> (q * bits)) & ((1u << bits) - 1u);
}

}  // namespace efcomm::quant
