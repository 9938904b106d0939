#pragma once
// Chunked Top-k with few-bit values (SparseLoCo's compressor: Sarfi, Therien, Lidin, Belilovsky
// 2025, arXiv 2508.15706), the arithmetic that the CPU reference (csrc/chunktopk_cpu.cpp) and the
// CUDA kernels (kernels/chunk_topk.cu) share. Torch-free, host and device; the wire layout is
// kernels/wire_layout.h (ChunkTopkLayout).
//
// Chunk c of `chunk` entries (the last may be shorter) keeps its k_c = min(k, length) entries of
// largest magnitude: the Top-k order of every efcomm op (NaN above +inf, among equal magnitudes
// the lower offset first; -0 and +0 equal), sent in ascending offset order. Its scale s is the
// largest magnitude it keeps, a float32 (the chunk's largest: NaN when the chunk holds a NaN, +inf
// when it holds an inf and no NaN). A kept value x (float32: the tensor's value, exact for
// bfloat16 and float16) is sent as a code q in [0, L], L = 2^bits - 1, of the level
//
//   value(q) = float32(s * float32(float32(2q - L) / float32(L)))     (2 bits: -s, -s/3, s/3, s)
//
// (2^bits levels, symmetric, no zero; the largest entry decodes exactly to +-s), q chosen by
// rounding to nearest in float32, each operation rounded on its own (no contraction):
//
//   q = clamp(rint(float32(float32(x / s) + 1) * float32(L / 2)), 0, L)   (rint: ties to even, so
//                                                                           x = 0 codes +s / L)
//
// When s is 0 (the kept entries are all zeros), inf or NaN, q = 0 for x < 0 and L otherwise: a
// chunk of zeros decodes to zeros, and a chunk holding inf or NaN decodes every kept entry to inf
// or NaN and carries a non-finite scale, which the hook's non-finite check reads. The rounding is
// deterministic (error feedback keeps the residual), and one code means the same on every device.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"
#include "kernels/storage.h"
#include "kernels/wire_layout.h"

namespace efcomm::chunk_topk {

constexpr int64_t kMinChunk = 32;
constexpr int64_t kMaxChunk = 4096;  // offsets of at most 12 bits

// Whether a chunk size and a code width are accepted (the op layer's checks name them).
EFCOMM_HD constexpr bool valid_chunk(int64_t chunk) {
  return chunk >= kMinChunk && chunk <= kMaxChunk && (chunk & (chunk - 1)) == 0;
}
EFCOMM_HD constexpr bool valid_bits(int64_t bits) {
  return bits == 2 || bits == 4 || bits == 8;
}

EFCOMM_HD constexpr uint32_t top_code(int64_t bits) {
  return (1u << bits) - 1u;
}

// The key that orders magnitudes: larger key, larger magnitude; every NaN the largest, -0 as +0.
EFCOMM_HD uint32_t magnitude_key(float x) {
  if (x != x) return 0xFFFFFFFFu;
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return bits & 0x7FFFFFFFu;
}

// The magnitude a key stands for (the scale of a chunk whose first-ranked entry has that key).
EFCOMM_HD float magnitude_of_key(uint32_t key) {
  if (key == 0xFFFFFFFFu) return NAN;
  float v;
  std::memcpy(&v, &key, 4);
  return v;
}

// The level of code q: float32(2q - L) / float32(L), in [-1, 1], never 0.
EFCOMM_HD float level(uint32_t q, int64_t bits) {
  const auto top = static_cast<float>(top_code(bits));
  return (2.0f * static_cast<float>(q) - top) / top;
}

// The code of a kept value x in a chunk of scale s (the rule above).
EFCOMM_HD uint32_t encode(float x, float s, int64_t bits) {
  const uint32_t top = top_code(bits);
  if (!(s > 0.0f) || !std::isfinite(s)) return x < 0.0f ? 0u : top;
  const float half = 0.5f * static_cast<float>(top);
  const float t = std::rint((x / s + 1.0f) * half);
  if (!(t > 0.0f)) return 0u;
  return t >= static_cast<float>(top) ? top : static_cast<uint32_t>(t);
}

// What code q of a chunk of scale s decodes to.
EFCOMM_HD float decode(float s, uint32_t q, int64_t bits) {
  return s * level(q, bits);
}

// A kept entry's field: its offset in the low offset_bits, its code above.
EFCOMM_HD uint32_t field_of(int64_t offset, uint32_t q, const wire::ChunkTopkLayout& layout) {
  return static_cast<uint32_t>(offset) | (q << layout.offset_bits);
}
EFCOMM_HD int64_t offset_of(uint32_t field, const wire::ChunkTopkLayout& layout) {
  return static_cast<int64_t>(field & ((1u << layout.offset_bits) - 1u));
}
EFCOMM_HD uint32_t code_of(uint32_t field, const wire::ChunkTopkLayout& layout) {
  return field >> layout.offset_bits;
}

// A row of a gathered buffer: chunk c's scale and its region of fields.
EFCOMM_HD float scale_of(const uint8_t* row, int64_t c) {
  return float_of_field(wire::read_header(row, c));
}
EFCOMM_HD const uint32_t* region_of(const uint8_t* row, const wire::ChunkTopkLayout& layout, int64_t c) {
  return reinterpret_cast<const uint32_t*>(row + layout.region_offset(c));
}

}  // namespace efcomm::chunk_topk
