#pragma once
// Argument checks shared by the CPU and CUDA implementations of every op, so that both
// devices reject bad input with the same message (naming the argument and its value).
#include <ATen/core/Tensor.h>

#include <optional>

#include "csrc/message_layout.h"

namespace efcomm {

// Indices travel as int32: a tensor handed to a sparsifying op has at most this many elements.
constexpr int64_t kMaxSparsifiedNumel = 2147483647;

// The threshold Top-k hint of the Top-k ops: float32, 2 elements, contiguous, on x's device.
void check_threshold_hint(const std::optional<at::Tensor>& threshold, const at::Tensor& x, const char* op);

void check_topk_args(const at::Tensor& x, int64_t k, const char* op);

// g and the in-place state it updates (named state_name in messages): same shape, dtype,
// device, contiguous state.
void check_stateful_encode_args(const at::Tensor& g, const at::Tensor& state,
                                const char* state_name, int64_t k, const char* op);

// Encoders with two states (EF21-SGDM: v and h_local; EControl: e and h_local) and a
// parameter eta in [0, 1].
void check_two_state_encode_args(const at::Tensor& g, const at::Tensor& first,
                                 const char* first_name, const at::Tensor& h_local, int64_t k,
                                 double eta, const char* op);

// Clip21's encoder: g, h_local, and a positive finite threshold tau.
// MoTEF's tracking step: g, M, V, G, G_mean of one shape, dtype and device, the four states
// contiguous; lam and gamma in (0, 1].
void check_motef_track_args(const at::Tensor& g, const at::Tensor& M, const at::Tensor& V, const at::Tensor& G,
                            const at::Tensor& G_mean, double lam, double gamma, const char* op);

void check_clip21_args(const at::Tensor& g, const at::Tensor& h_local, double tau, const char* op);

// Returns the layout that `gathered` rows must follow; weights (if any): one finite value
// per row.
TopkMessageLayout check_topk_decode_args(const at::Tensor& h, const at::Tensor& gathered,
                                         int64_t k, std::optional<at::ArrayRef<double>> weights,
                                         const char* op);

// `gathered` as [rows, dense_message_nbytes(h.numel())] uint8, for h; world_size, if given,
// at least the number of rows.
void check_dense_decode_args(const at::Tensor& h, const at::Tensor& gathered,
                             std::optional<int64_t> world_size, const char* op);

// The lazy trigger: g, h_local and y alike, zeta >= 0.
void check_lazy_trigger_args(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                             double zeta, const char* op);

// AdaCGD's ladder: at least one rung, strictly increasing, each in [1, numel].
void check_ladder(at::IntArrayRef ks, int64_t numel, const char* op);

// Blockwise quantizers: the scheme's number goes to *scheme_id; returns the message layout.
// QSGD and natural are stochastic by definition, sign deterministic; step and rank >= 0.
QuantMessageLayout check_quantize_args(const at::Tensor& x, c10::string_view scheme, int64_t levels,
                                       int64_t block, bool stochastic, int64_t step, int64_t rank,
                                       int32_t* scheme_id, const char* op);

// ef21_quantize_: g and h_local as for the other EF21 encoders, then check_quantize_args.
QuantMessageLayout check_ef21_quantize_args(const at::Tensor& g, const at::Tensor& h_local,
                                            c10::string_view scheme, int64_t levels, int64_t block,
                                            bool stochastic, int64_t step, int64_t rank, int32_t* scheme_id);

// `gathered` as [rows, quant_message_nbytes(h.numel(), ...)] uint8; scale finite; weights
// (if any) one finite value per row.
QuantMessageLayout check_quant_decode_args(const at::Tensor& h, const at::Tensor& gathered,
                                           c10::string_view scheme, int64_t levels, int64_t block,
                                           double scale, std::optional<at::ArrayRef<double>> weights,
                                           int32_t* scheme_id, const char* op);

// Rand-k: x a float tensor, 1 <= k <= numel, step >= 0.
void check_randk_args(const at::Tensor& x, int64_t k, int64_t step, const char* op);

// `gathered` as [rows, dense_message_nbytes(k, h.dtype)] uint8, plus check_randk_args on h.
void check_randk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t step,
                             double scale, std::optional<at::ArrayRef<double>> weights,
                             const char* op);

}  // namespace efcomm
