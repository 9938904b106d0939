#pragma once
// C++ entry points of the efcomm ops, one per device, and their contract (the schemas:
// csrc/schemas.cpp). Python and C++ users normally go through
// the dispatcher (torch.ops.efcomm.* / c10::Dispatcher); these declarations let the GoogleTest
// binary call an implementation directly. The CPU implementations are the reference.
//
// Top-k (csrc/topk_*.cpp). Exact Top-k by magnitude over the flattened tensor: indices
// ascending, among equal magnitudes the lower index first, NaN above +inf. Every Top-k op takes
// an optional threshold hint (float32[2] on x's device, read and rewritten; kernels/topk_hint.h);
// the selection stays exact.
//   topk                 (values [k] in x's dtype, indices [k] int32)
//
// The family pairs (every family alike):
//   X_encode_(a, b, ..., scale): d = T(a - b) (b given) or a; the message of C(d), unscaled;
//     with b, b_i = T(float(b_i) + float32(scale * v_i)) at every entry i the message carries
//     (v_i the value it decodes to), by the decode rule (kernels/decode_rule.h) for one row.
//   X_decode_add_(h, gathered, ..., scale, weights): h += scale * (1/rows) sum_j C_j, or
//     h += scale * sum_j w_j C_j, in rank order (kernels/decode_rule.h).
//   Top-k: the k entries of d of largest magnitude (wire: kernels/wire_layout.h, sparse; with
//     index_bits 16, compact). Its values are written as value_dtype (None: d's dtype; for a
//     float32 tensor also bfloat16 or float16, rounded to nearest even), and the state update
//     adds the value as sent, so EF21's h_i keeps the rounding error.
//   Rand-k (csrc/randk_*.cpp; kernels/randk_rule.h): the k entries at randk_indices; shared
//     indices (rank absent): the values only (dense layout of k); rank given: per-rank indices,
//     the sparse layout, decoded by topk_decode_add_.
//   quant (csrc/quant_*.cpp; kernels/quant_schemes.h): blockwise codes of d.
//   dense (csrc/dense_*.cpp): the values of d, or with clip min(1, clip / ||d||) d (||d||
//     summed in double in index order on the CPU; CUDA may differ in the factor's last bits).
//   chunktopk (csrc/chunktopk_*.cpp; kernels/chunk_topk_rule.h): per chunk of `chunk` entries,
//     its k_c = min(k, length) entries of largest magnitude, one float32 scale (their largest
//     magnitude) and `bits`-bit codes of 2^bits symmetric levels; values computed in float32.
//
// Method ops (csrc/method_*.cpp):
//   motef_track_: MoTEF's momentum and tracking step (Islamov, Gao, Stich 2024), per entry in
//     float32, each operation rounded on its own: s = lam * (g - M); M = T(M + s);
//     V = T((V + s) + gamma * (G_mean - G)).
//   lazy_trigger: the 3PC trigger ||g - h_local||^2 > zeta ||g - y||^2, differences in float32,
//     squares summed in double in index order; a 0-dim bool tensor.
//   adacgd_choose: AdaCGD's rung (Makarenko et al. 2022) among ks[0] < ks[1] < ...: 0 when
//     ||d||^2 <= zeta ||g - y||^2 (d = g - h_local); else the first rung j + 1 whose error
//     ||d - TopK_{ks[j]}(d)||^2 is within the bound; else the last. A 0-dim int32 tensor.
// (On CUDA the three reductions sum in the GPU's order: at a boundary a decision can differ
// from the CPU's; every rank of a run uses one device.)
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

#define EFCOMM_DECLARE_OPS(DEVICE)                                                                                     \
  std::tuple<at::Tensor, at::Tensor> topk_##DEVICE(const at::Tensor& x, int64_t k,                                     \
                                                   const std::optional<at::Tensor>& threshold = std::nullopt);         \
  at::Tensor topk_encode_##DEVICE(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k,                  \
                                  double scale = 1.0, const std::optional<at::Tensor>& threshold = std::nullopt,       \
                                  std::optional<c10::ScalarType> value_dtype = std::nullopt, int64_t index_bits = 32); \
  void topk_decode_add_##DEVICE(at::Tensor& h, const at::Tensor& gathered, int64_t k, double scale = 1.0,              \
                                const std::optional<at::Tensor>& weights = std::nullopt,                               \
                                std::optional<c10::ScalarType> value_dtype = std::nullopt, int64_t index_bits = 32);   \
  at::Tensor randk_indices_##DEVICE(const at::Tensor& x, int64_t k, int64_t seed, int64_t step, int64_t bucket,        \
                                    bool window, std::optional<int64_t> rank = std::nullopt);                          \
  at::Tensor randk_encode_##DEVICE(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t seed,   \
                                   int64_t step, int64_t bucket, bool window, double scale = 1.0,                      \
                                   std::optional<int64_t> rank = std::nullopt);                                        \
  void randk_decode_add_##DEVICE(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t seed, int64_t step,     \
                                 int64_t bucket, bool window, double scale = 1.0,                                      \
                                 const std::optional<at::Tensor>& weights = std::nullopt);                             \
  at::Tensor quant_encode_##DEVICE(const at::Tensor& a, const std::optional<at::Tensor>& b, c10::string_view scheme,   \
                                   int64_t levels, int64_t block, bool stochastic, int64_t seed, int64_t step,         \
                                   int64_t bucket, int64_t rank, double scale = 1.0);                                  \
  void quant_decode_add_##DEVICE(at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme, int64_t levels,   \
                                 int64_t block, double scale = 1.0,                                                    \
                                 const std::optional<at::Tensor>& weights = std::nullopt);                             \
  at::Tensor dense_encode_##DEVICE(const at::Tensor& a, const std::optional<at::Tensor>& b,                            \
                                   std::optional<double> clip = std::nullopt, double scale = 1.0);                     \
  void dense_decode_add_##DEVICE(at::Tensor& h, const at::Tensor& gathered, double scale = 1.0,                        \
                                 const std::optional<at::Tensor>& weights = std::nullopt);                             \
  at::Tensor chunktopk_encode_##DEVICE(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k,             \
                                       int64_t chunk, int64_t bits, double scale = 1.0);                               \
  void chunktopk_decode_add_##DEVICE(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t chunk,              \
                                     int64_t bits, double scale = 1.0,                                                 \
                                     const std::optional<at::Tensor>& weights = std::nullopt);                         \
  void motef_track_##DEVICE(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G,                    \
                            const at::Tensor& G_mean, double lam, double gamma);                                       \
  at::Tensor lazy_trigger_##DEVICE(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, double zeta);  \
  at::Tensor adacgd_choose_##DEVICE(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,               \
                                    at::IntArrayRef ks, double zeta);

namespace efcomm {

EFCOMM_DECLARE_OPS(cpu)
#ifdef EFCOMM_WITH_CUDA
EFCOMM_DECLARE_OPS(cuda)
#endif

}  // namespace efcomm

#undef EFCOMM_DECLARE_OPS
