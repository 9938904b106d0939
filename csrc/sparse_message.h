#pragma once
// The CPU reference of the encoders' gather (kernels/sparse_message.cuh, gather_message), shared by
// the Top-k and Rand-k references; defined in csrc/topk_cpu.cpp.
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace efcomm {

// The message of the entries `selected` of d = T(a - b) (b given) or a (contiguous a): their
// values, then, with_indices, their int32 indices (the sparse layout) or not (the dense layout of
// k values: Rand-k with shared indices); with b, b += scale * the message at those entries
// (kernels/decode_rule.h, encode_entry).
at::Tensor gather_message_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b,
                              const std::vector<int64_t>& selected, double scale, bool with_indices);

}  // namespace efcomm
