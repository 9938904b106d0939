#include "csrc/message_layout.h"

#include <c10/util/Exception.h>

#include <string>

#include "csrc/checks.h"
#include "kernels/chunk_topk_rule.h"
#include "kernels/quant_schemes.h"

namespace efcomm {
namespace {

void check_value_dtype(c10::ScalarType dtype, const char* op) {
  TORCH_CHECK(dtype == c10::kFloat || dtype == c10::kBFloat16 || dtype == c10::kHalf, op, ": dtype (", dtype,
              ") must be float32, bfloat16 or float16");
}

}  // namespace

wire::SparseLayout sparse_layout_of(int64_t k, c10::ScalarType dtype) {
  return wire::sparse_layout(k, static_cast<int64_t>(c10::elementSize(dtype)));
}

wire::DenseLayout dense_layout_of(int64_t count, c10::ScalarType dtype) {
  return wire::dense_layout(count, static_cast<int64_t>(c10::elementSize(dtype)));
}

wire::CompactLayout compact_layout_of(int64_t numel, int64_t k, c10::ScalarType value_dtype) {
  return wire::compact_layout(numel, k, static_cast<int64_t>(c10::elementSize(value_dtype)));
}

SparseFormat sparse_format(c10::ScalarType dtype, std::optional<c10::ScalarType> value_dtype, int64_t index_bits,
                           const char* op) {
  const c10::ScalarType values = value_dtype.value_or(dtype);
  const bool narrower = dtype == c10::kFloat && (values == c10::kBFloat16 || values == c10::kHalf);
  TORCH_CHECK(values == dtype || narrower, op, ": value_dtype (", values, ") must be the tensor's dtype (", dtype, ")",
              dtype == c10::kFloat ? ", bfloat16 or float16" : "");
  TORCH_CHECK(index_bits == 32 || index_bits == 16, op, ": index_bits (", index_bits, ") must be 32 or 16");
  return SparseFormat{values, index_bits == 16};
}

int64_t sparse_message_nbytes(int64_t numel, int64_t k, const SparseFormat& format) {
  return format.compact ? compact_layout_of(numel, k, format.value_dtype).nbytes
                        : sparse_layout_of(k, format.value_dtype).nbytes;
}

QuantConfig quant_config(int64_t numel, c10::string_view scheme, int64_t levels, int64_t block, const char* op) {
  TORCH_CHECK(numel >= 1, op, ": numel (", numel, ") must be at least 1");
  const int32_t id = quant::scheme_id(std::string(scheme));
  TORCH_CHECK(id >= 0, op, ": scheme ('", scheme, "') must be one of ", quant::scheme_names());
  TORCH_CHECK(block >= 32 && block <= 8192 && block % 32 == 0, op, ": block (", block,
              ") must be a multiple of 32 in [32, 8192]");
  QuantConfig config{id, static_cast<int32_t>(levels), {}};
  quant::with_codec(id, [&](auto codec) {
    using Codec = decltype(codec);
    if constexpr (Codec::kMaxLevels > 0) {
      TORCH_CHECK(levels >= 1 && levels <= Codec::kMaxLevels, op, ": levels (", levels, ") must be in [1, ",
                  Codec::kMaxLevels, "] for ", Codec::kName);
    }
    config.layout = wire::quant_layout(numel, block, Codec::bits(config.levels));
  });
  return config;
}

wire::ChunkTopkLayout chunk_topk_config(int64_t numel, int64_t k, int64_t chunk, int64_t bits, const char* op) {
  TORCH_CHECK(numel >= 1, op, ": numel (", numel, ") must be at least 1");
  TORCH_CHECK(chunk_topk::valid_chunk(chunk), op, ": chunk (", chunk, ") must be a power of two in [",
              chunk_topk::kMinChunk, ", ", chunk_topk::kMaxChunk, "]");
  TORCH_CHECK(k >= 1, op, ": k (", k, ") must be at least 1");
  TORCH_CHECK(k <= chunk, op, ": k (", k, ") exceeds the chunk (", chunk, "); k counts the entries kept per chunk");
  TORCH_CHECK(chunk_topk::valid_bits(bits), op, ": bits (", bits, ") must be 2, 4 or 8");
  return wire::chunk_topk_layout(numel, chunk, k, bits);
}

int64_t message_nbytes(c10::string_view family, int64_t numel, c10::ScalarType dtype, int64_t k,
                       c10::string_view scheme, int64_t levels, int64_t block, int64_t bits) {
  const char* op = "message_nbytes";
  check_value_dtype(dtype, op);
  TORCH_CHECK(numel >= 1, op, ": numel (", numel, ") must be at least 1");
  if (family == "topk") {
    check_k(k, numel, op);
    return sparse_layout_of(k, dtype).nbytes;
  }
  if (family == "topk16") {
    check_k(k, numel, op);
    return compact_layout_of(numel, k, dtype).nbytes;
  }
  if (family == "randk") {
    check_k(k, numel, op);
    return dense_layout_of(k, dtype).nbytes;
  }
  if (family == "dense") return dense_layout_of(numel, dtype).nbytes;
  if (family == "chunktopk") return chunk_topk_config(numel, k, block, bits, op).nbytes;
  TORCH_CHECK(family == "quant", op, ": family ('", family,
              "') must be one of 'topk', 'topk16', 'randk', 'dense', 'quant', 'chunktopk'");
  return quant_config(numel, scheme, levels, block, op).layout.nbytes;
}

}  // namespace efcomm
