#pragma once
// Argument checks shared by the CPU and CUDA implementations of every op, so that both devices
// reject bad input with the same message, naming the argument and its value. The checks that
// validate a message size return the layout (csrc/message_layout.h).
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "csrc/message_layout.h"

namespace efcomm {

// Indices travel as int32: a tensor handed to a sparsifying op has at most this many elements.
constexpr int64_t kMaxSparsifiedNumel = 2147483647;

// 1 <= k <= numel.
void check_k(int64_t k, int64_t numel, const char* op);

// topk: x float32, bfloat16 or float16, dense; 1 <= k <= numel; the threshold hint, when given,
// float32, 2 elements, contiguous, on x's device (as every Top-k op's).
void check_topk_args(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& threshold);

// Rand-k: x a float tensor, 1 <= k <= numel, step >= 0, rank (when given) >= 0.
void check_randk_args(const at::Tensor& x, int64_t k, int64_t step, std::optional<int64_t> rank, const char* op);

// The encodes, one check per op: the source a and its optional in-place state b (same shape,
// dtype and device as a, contiguous), scale finite, and the family's own arguments (Top-k: k
// and the hint; Rand-k: as check_randk_args; quantizers: the configuration, quant_config, and
// the rounding the scheme allows, step and rank >= 0; dense: clip, when given, positive and
// finite).
// Top-k also checks its message format (sparse_format) and returns it.
SparseFormat check_topk_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, double scale,
                                    const std::optional<at::Tensor>& threshold,
                                    std::optional<c10::ScalarType> value_dtype, int64_t index_bits);
void check_randk_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t step,
                             double scale, std::optional<int64_t> rank);
QuantConfig check_quant_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, c10::string_view scheme,
                                    int64_t levels, int64_t block, bool stochastic, int64_t step, int64_t rank,
                                    double scale);
void check_dense_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, std::optional<double> clip,
                             double scale);
// Chunked Top-k: a non-empty, and the configuration (chunk_topk_config); returns the layout.
wire::ChunkTopkLayout check_chunktopk_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k,
                                                  int64_t chunk, int64_t bits, double scale);

// The decode-adds, one check per op: h (float, contiguous), `gathered` as [rows, nbytes] uint8,
// contiguous, 4-byte aligned, on h's device, with rows of the layout's nbytes; scale finite;
// weights, when given, a float32 1-D contiguous tensor of `rows` values on h's device (finite
// when on the CPU: reading a CUDA tensor's values would wait for the device).
SparseFormat check_topk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k, double scale,
                                    const std::optional<at::Tensor>& weights,
                                    std::optional<c10::ScalarType> value_dtype, int64_t index_bits);
wire::DenseLayout check_randk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t step,
                                          double scale, const std::optional<at::Tensor>& weights);
QuantConfig check_quant_decode_args(const at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme,
                                    int64_t levels, int64_t block, double scale,
                                    const std::optional<at::Tensor>& weights);
wire::DenseLayout check_dense_decode_args(const at::Tensor& h, const at::Tensor& gathered, double scale,
                                          const std::optional<at::Tensor>& weights);
wire::ChunkTopkLayout check_chunktopk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k,
                                                  int64_t chunk, int64_t bits, double scale,
                                                  const std::optional<at::Tensor>& weights);

// MoTEF's tracking step: g, M, V, G, G_mean of one shape, dtype and device, the four states
// contiguous; lam and gamma in (0, 1].
void check_motef_track_args(const at::Tensor& g, const at::Tensor& M, const at::Tensor& V, const at::Tensor& G,
                            const at::Tensor& G_mean, double lam, double gamma, const char* op);

// The lazy trigger: g, h_local and y alike, zeta >= 0 and finite.
void check_lazy_trigger_args(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, double zeta,
                             const char* op);

// AdaCGD's ladder: at least one rung, strictly increasing, each in [1, numel].
void check_ladder(at::IntArrayRef ks, int64_t numel, const char* op);

}  // namespace efcomm
