#pragma once
// The op layer's side of the wire format (kernels/wire_layout.h): the layouts of messages of
// ATen dtypes, the quantizer configuration checked against the scheme registry, and the
// `message_nbytes` op, the one function Python asks for sizes.
#include <c10/core/ScalarType.h>
#include <c10/util/string_view.h>

#include <cstdint>

#include "kernels/wire_layout.h"

namespace efcomm {

wire::SparseLayout sparse_layout_of(int64_t k, c10::ScalarType dtype);
wire::DenseLayout dense_layout_of(int64_t count, c10::ScalarType dtype);

// A blockwise quantizer's scheme (its id in kernels/quant_schemes.h), levels and layout.
struct QuantConfig {
  int32_t scheme;
  int32_t levels;
  wire::QuantLayout layout;
};

// Checks scheme (a registered name), block (a multiple of 32 in [32, 8192]), levels (the
// scheme's range, when it takes levels) and numel (at least 1), naming the bad argument.
QuantConfig quant_config(int64_t numel, c10::string_view scheme, int64_t levels, int64_t block,
                         const char* op);

// The op `message_nbytes(str family, int numel, ScalarType dtype, int k=0, str scheme="",
// int levels=0, int block=0) -> int`: family "topk" (k values and k int32 indices; also
// Rand-k with per-rank indices), "randk" (k values), "dense" (numel values) or "quant".
int64_t message_nbytes(c10::string_view family, int64_t numel, c10::ScalarType dtype, int64_t k,
                       c10::string_view scheme, int64_t levels, int64_t block);

}  // namespace efcomm
