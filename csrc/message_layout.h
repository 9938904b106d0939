#pragma once
// The op layer's side of the wire format (kernels/wire_layout.h): the layouts of messages of
// ATen dtypes, the quantizer configuration checked against the scheme registry, and the
// `message_nbytes` op, the one function Python asks for sizes.
#include <c10/core/ScalarType.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>

#include "kernels/wire_layout.h"

namespace efcomm {

wire::SparseLayout sparse_layout_of(int64_t k, c10::ScalarType dtype);
wire::DenseLayout dense_layout_of(int64_t count, c10::ScalarType dtype);
wire::CompactLayout compact_layout_of(int64_t numel, int64_t k, c10::ScalarType value_dtype);

// A Top-k message's format: its values' dtype (the tensor's, or, for a float32 tensor, bfloat16
// or float16) and its index width (32: the sparse layout; 16: the compact layout).
struct SparseFormat {
  c10::ScalarType value_dtype;
  bool compact;
};

// Checks value_dtype (None: the tensor's dtype) and index_bits (32 or 16) for a tensor of dtype,
// naming the bad argument.
SparseFormat sparse_format(c10::ScalarType dtype, std::optional<c10::ScalarType> value_dtype, int64_t index_bits,
                           const char* op);

// The byte length of a Top-k message of k entries of a tensor of numel entries in that format.
int64_t sparse_message_nbytes(int64_t numel, int64_t k, const SparseFormat& format);

// A blockwise quantizer's scheme (its id in kernels/quant_schemes.h), levels and layout.
struct QuantConfig {
  int32_t scheme;
  int32_t levels;
  wire::QuantLayout layout;
};

// Checks scheme (a registered name), block (a multiple of 32 in [32, 8192]), levels (the
// scheme's range, when it takes levels) and numel (at least 1), naming the bad argument.
QuantConfig quant_config(int64_t numel, c10::string_view scheme, int64_t levels, int64_t block, const char* op);

// Chunked Top-k's layout (kernels/chunk_topk_rule.h): checks numel (at least 1), chunk (a power
// of two in [32, 4096]), k (in [1, chunk]: per chunk) and bits (2, 4 or 8), naming the bad
// argument.
wire::ChunkTopkLayout chunk_topk_config(int64_t numel, int64_t k, int64_t chunk, int64_t bits, const char* op);

// The op `message_nbytes(str family, int numel, ScalarType dtype, int k=0, str scheme="",
// int levels=0, int block=0, int bits=0) -> int`: family "topk" (k values of dtype and k int32
// indices; also Rand-k with per-rank indices), "topk16" (the compact layout: k values of dtype,
// 16-bit offsets, a count per chunk), "randk" (k values), "dense" (numel values), "quant"
// (scheme, levels, block) or "chunktopk" (k per chunk of `block` entries, `bits` per code; its
// length does not depend on dtype).
int64_t message_nbytes(c10::string_view family, int64_t numel, c10::ScalarType dtype, int64_t k,
                       c10::string_view scheme, int64_t levels, int64_t block, int64_t bits = 0);

}  // namespace efcomm
