#pragma once
// The wire format of every efcomm message, defined here and nowhere else: the op layer
// (csrc/), the kernels and the `message_nbytes` op all use these functions. Torch-free, host
// and device; the bit packing assumes a little-endian machine (x86, Arm, every CUDA GPU).
//
// A message is one contiguous uint8 buffer whose length depends only on the configuration and
// the tensor's size, never on the data, so one all_gather_into_tensor moves every rank's. Every
// length is a multiple of 4, so each row of a gathered [rows, nbytes] buffer keeps its 4-byte
// fields aligned.
//
// Sparse (Top-k; Rand-k with per-rank indices): k entries of a dtype of value_size bytes,
//   [0, value_bytes)               the k values, in ascending index order
//   [value_bytes, indices_offset)  zero padding to a multiple of 4
//   [indices_offset, nbytes)       the k int32 indices into the flattened tensor, ascending
// Compact sparse (Top-k with 16-bit indices; efcomm.hierarchy's messages between nodes): the
// tensor's numel entries cut into chunks of kCompactChunk = 65536, the k entries ascending,
// their values of a dtype of value_size bytes (the tensor's, or a narrower one),
//   [0, values_offset)              one uint32 count per chunk: how many entries fall in it
//   [values_offset, offsets_offset) the k values, then zero padding to a multiple of 4
//   [offsets_offset, nbytes)        the k uint16 offsets within their chunk (index mod 65536),
//                                   then zero padding to a multiple of 4
// About value_size + 2 bytes per entry (4 with bfloat16 values) instead of value_size + 4, and
// still a length that depends only on (numel, k, value_size).
// Dense (Rand-k with shared indices: its k values; dense: all numel values),
//   [0, value_bytes)               the values, in message order
//   [value_bytes, nbytes)          zero padding to a multiple of 4
// Quantized: numel entries cut into nblocks = ceil(numel / block) blocks of `block` entries (a
// multiple of 32; the last block padded with zero codes), `bits` per entry (the scheme's,
// kernels/quant_schemes.h),
//   [0, codes_offset)              one 4-byte header per block (the scheme's)
//   [codes_offset, nbytes)         block b's region: words_per_block = block * bits / 32 32-bit
//                                  words; entry e of the block holds bits [e * bits, (e + 1) * bits)
//                                  of the region, bit p being bit p % 32 of word p / 32 (a code
//                                  may straddle two words)
// Chunked Top-k (SparseLoCo's; kernels/chunk_topk_rule.h): numel entries cut into
// chunks = ceil(numel / chunk) chunks of `chunk` entries (a power of two in [32, 4096]; the last
// may be shorter), chunk c keeping k_c = min(k, its length) entries, each a field of
// field_bits = log2(chunk) + bits bits: its offset within the chunk in the low log2(chunk) bits,
// its code above them,
//   [0, fields_offset)             one float32 scale per chunk (NaN canonical)
//   [fields_offset, nbytes)        chunk c's region at fields_offset + 4 * words_per_chunk * c:
//                                  ceil(k_c * field_bits / 32) 32-bit words (words_per_chunk for a
//                                  full chunk); field e, the e-th kept entry in ascending offset
//                                  order, holds bits [e * field_bits, (e + 1) * field_bits) of the
//                                  region, bit p being bit p % 32 of word p / 32; the rest zero
// A full chunk of 4096 entries at k = 82 and 2 bits: 4 + 4 * ceil(82 * 14 / 32) = 148 bytes for
// 16384 bytes of float32.
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace efcomm::wire {

EFCOMM_HD constexpr int64_t align4(int64_t bytes) {
  return (bytes + 3) / 4 * 4;
}

struct SparseLayout {
  int64_t k;
  int64_t value_bytes;     // k * value_size
  int64_t indices_offset;  // value_bytes rounded up to a multiple of 4
  int64_t nbytes;          // indices_offset + 4 * k
};

EFCOMM_HD constexpr SparseLayout sparse_layout(int64_t k, int64_t value_size) {
  return SparseLayout{k, k * value_size, align4(k * value_size), align4(k * value_size) + 4 * k};
}

constexpr int64_t kCompactChunk = 65536;

struct CompactLayout {
  int64_t k;
  int64_t chunks;          // ceil(numel / kCompactChunk)
  int64_t values_offset;   // 4 * chunks
  int64_t value_bytes;     // k * value_size
  int64_t offsets_offset;  // values_offset + value_bytes rounded up to a multiple of 4
  int64_t nbytes;          // offsets_offset + 2 * k rounded up to a multiple of 4
};

EFCOMM_HD constexpr CompactLayout compact_layout(int64_t numel, int64_t k, int64_t value_size) {
  const int64_t chunks = (numel + kCompactChunk - 1) / kCompactChunk;
  const int64_t offsets_offset = 4 * chunks + align4(k * value_size);
  return CompactLayout{k, chunks, 4 * chunks, k * value_size, offsets_offset, offsets_offset + align4(2 * k)};
}

struct DenseLayout {
  int64_t count;
  int64_t value_bytes;  // count * value_size
  int64_t nbytes;       // value_bytes rounded up to a multiple of 4
};

EFCOMM_HD constexpr DenseLayout dense_layout(int64_t count, int64_t value_size) {
  return DenseLayout{count, count * value_size, align4(count * value_size)};
}

struct QuantLayout {
  int64_t numel;
  int64_t block;
  int64_t nblocks;
  int64_t bits;             // per entry, at most 16
  int64_t words_per_block;  // block * bits / 32
  int64_t codes_offset;     // 4 * nblocks
  int64_t nbytes;           // codes_offset + 4 * nblocks * words_per_block
};

EFCOMM_HD constexpr QuantLayout quant_layout(int64_t numel, int64_t block, int64_t bits) {
  const int64_t nblocks = (numel + block - 1) / block;
  const int64_t words_per_block = block * bits / 32;
  return QuantLayout{
      numel, block, nblocks, bits, words_per_block, 4 * nblocks, 4 * nblocks + 4 * nblocks * words_per_block};
}

struct ChunkTopkLayout {
  int64_t numel;
  int64_t chunk;            // a power of two in [32, 4096]
  int64_t k;                // entries kept per full chunk, in [1, chunk]
  int64_t bits;             // per code
  int64_t offset_bits;      // log2(chunk)
  int64_t field_bits;       // offset_bits + bits
  int64_t chunks;           // ceil(numel / chunk)
  int64_t words_per_chunk;  // ceil(k * field_bits / 32)
  int64_t fields_offset;    // 4 * chunks
  int64_t nbytes;           // fields_offset + 4 * (words of every chunk)

  EFCOMM_HD int64_t length(int64_t c) const {
    const int64_t rest = numel - c * chunk;
    return rest < chunk ? rest : chunk;
  }
  EFCOMM_HD int64_t kept(int64_t c) const {
    const int64_t len = length(c);
    return k < len ? k : len;
  }
  EFCOMM_HD int64_t words(int64_t c) const { return (kept(c) * field_bits + 31) / 32; }
  EFCOMM_HD int64_t region_offset(int64_t c) const { return fields_offset + 4 * words_per_chunk * c; }
};

EFCOMM_HD constexpr int64_t log2_of_power_of_two(int64_t v) {
  int64_t bits = 0;
  while ((int64_t{1} << bits) < v) ++bits;
  return bits;
}

EFCOMM_HD ChunkTopkLayout chunk_topk_layout(int64_t numel, int64_t chunk, int64_t k, int64_t bits) {
  ChunkTopkLayout layout{};
  layout.numel = numel;
  layout.chunk = chunk;
  layout.k = k;
  layout.bits = bits;
  layout.offset_bits = log2_of_power_of_two(chunk);
  layout.field_bits = layout.offset_bits + bits;
  layout.chunks = (numel + chunk - 1) / chunk;
  layout.words_per_chunk = (k * layout.field_bits + 31) / 32;
  layout.fields_offset = 4 * layout.chunks;
  const int64_t last = layout.chunks - 1;
  layout.nbytes = layout.fields_offset + 4 * (layout.words_per_chunk * last + layout.words(last));
  return layout;
}

// Field e of a chunk's region (`words`, 4-byte aligned); fields are at most 32 bits.
EFCOMM_HD uint32_t read_field(const uint32_t* words, int64_t e, int64_t field_bits) {
  const int64_t bit = e * field_bits;
  const int shift = static_cast<int>(bit % 32);
  words += bit / 32;
  uint64_t pair = words[0];
  if (shift + field_bits > 32) pair |= static_cast<uint64_t>(words[1]) << 32;
  return static_cast<uint32_t>(pair >> shift) & static_cast<uint32_t>((uint64_t{1} << field_bits) - 1u);
}

// Sets field e of a region whose fields are zero so far (on the host; the CUDA kernel ORs the two
// parts into shared memory with atomics).
EFCOMM_HD void write_field(uint32_t* words, int64_t e, int64_t field_bits, uint32_t field) {
  const int64_t bit = e * field_bits;
  const int shift = static_cast<int>(bit % 32);
  words += bit / 32;
  words[0] |= field << shift;
  if (shift + field_bits > 32) words[1] |= field >> (32 - shift);
}

EFCOMM_HD uint32_t read_header(const uint8_t* message, int64_t b) {
  uint32_t header;
  std::memcpy(&header, message + 4 * b, 4);
  return header;
}

EFCOMM_HD void write_header(uint8_t* message, int64_t b, uint32_t header) {
  std::memcpy(message + 4 * b, &header, 4);
}

// Entry i's code; the message starts at a 4-byte aligned address.
EFCOMM_HD uint32_t read_code(const uint8_t* message, const QuantLayout& layout, int64_t i) {
  const int64_t bit = (i % layout.block) * layout.bits;
  const auto* words = reinterpret_cast<const uint32_t*>(message + layout.codes_offset) +
                      (i / layout.block) * layout.words_per_block + bit / 32;
  const int shift = static_cast<int>(bit % 32);
  uint64_t pair = words[0];
  if (shift + layout.bits > 32) pair |= static_cast<uint64_t>(words[1]) << 32;
  return static_cast<uint32_t>(pair >> shift) & ((1u << layout.bits) - 1u);
}

// Sets entry i's code in a message whose codes are zero so far.
EFCOMM_HD void write_code(uint8_t* message, const QuantLayout& layout, int64_t i, uint32_t code) {
  const int64_t bit = (i % layout.block) * layout.bits;
  auto* words = reinterpret_cast<uint32_t*>(message + layout.codes_offset) +
                (i / layout.block) * layout.words_per_block + bit / 32;
  const int shift = static_cast<int>(bit % 32);
  words[0] |= code << shift;
  if (shift + layout.bits > 32) words[1] |= code >> (32 - shift);
}

}  // namespace efcomm::wire
