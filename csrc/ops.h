#pragma once
// C++ entry points of the efcomm ops, one per device. Python and C++ users normally go
// through the dispatcher (torch.ops.efcomm.* / c10::Dispatcher); these declarations let
// the GoogleTest binaries call an implementation directly.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace efcomm {

// Exact Top-k by magnitude over the flattened x. Returns (values [k] in x's dtype,
// indices [k] int32), indices ascending; among equal magnitudes the lower index wins;
// NaN ranks above +inf.
// Every Top-k op takes an optional threshold hint (float32[2] on x's device, read and
// rewritten): threshold Top-k, kernels/topk_hint.h. The selection stays exact.
std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& x, int64_t k,
                                             const std::optional<at::Tensor>& threshold = std::nullopt);

// The Top-k message of x (no state): the compressor of plain compressed SGD (DCSGD).
at::Tensor topk_encode_cpu(const at::Tensor& x, int64_t k,
                           const std::optional<at::Tensor>& threshold = std::nullopt);

// Classic error feedback (Seide et al. 2014; Stich et al. 2018) with Top-k:
//   e = g + e (rounded to g's dtype);  c = TopK(e);  e -= c;  returns the message of c.
at::Tensor ef_topk_encode_cpu(const at::Tensor& g, at::Tensor& e, int64_t k,
                              const std::optional<at::Tensor>& threshold = std::nullopt);

// EF21 worker step with the Top-k compressor (Richtarik et al. 2021):
//   d = g - h_local;  c = TopK(d);  h_local += c;  returns the message of c
// (layout in csrc/message_layout.h). d is rounded to g's dtype before selection.
at::Tensor ef21_topk_encode_cpu(const at::Tensor& g, at::Tensor& h_local, int64_t k,
                                const std::optional<at::Tensor>& threshold = std::nullopt);

// EF21-SGDM worker step (Fatkhullin, Tyurin, Richtarik 2023, arXiv 2305.15155):
//   v = (1 - eta) v + eta g;  c = TopK(v - h_local);  h_local += c;  returns the message of c.
at::Tensor ef21_sgdm_topk_encode_cpu(const at::Tensor& g, at::Tensor& v, at::Tensor& h_local,
                                     int64_t k, double eta,
    const std::optional<at::Tensor>& threshold = std::nullopt);

// EControl worker step (Gao, Islamov, Stich 2023, arXiv 2311.05645):
//   delta = TopK(eta e + g - h_local);  e += g - h_local - delta;  h_local += delta.
// Rounding: r = T(g - h), p = T(r + T(eta e)), e = T(e + r), then e -= p and h += p where sent.
at::Tensor econtrol_topk_encode_cpu(const at::Tensor& g, at::Tensor& e, at::Tensor& h_local,
                                    int64_t k, double eta,
    const std::optional<at::Tensor>& threshold = std::nullopt);

// Without weights: h += (1/n) * sum_j c_j over the n gathered Top-k messages ([n, nbytes]
// uint8): acc = sum in rank order in float32, then h = dtype(float(h) + float32(acc * (1/n))).
// With weights w (one per rank, EF21-W): acc = sum_j float32(w_j * c_j) in rank order, then
// h = dtype(float(h) + acc).
void topk_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, int64_t k,
                         std::optional<at::ArrayRef<double>> weights);

// Clip21 worker step (Khirirat et al. 2023, arXiv 2305.18929): d = g - h_local (rounded to
// g's dtype); c = min(1, tau / ||d||) d, with ||d|| accumulated in double in index order
// (c = d when the factor is 1); h_local += c; returns the dense message of c.
at::Tensor clip21_encode_cpu(const at::Tensor& g, at::Tensor& h_local, double tau);

// h += (1/n) sum_j c_j over gathered dense messages: float32 sum in rank order, then
// h = dtype(float(h) + float32(acc * (1/n))). n is world_size when given (lazy methods
// gather only the rows of the workers that sent), else the number of rows.
void dense_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered,
                          std::optional<int64_t> world_size);

// LAG's message (Richtarik et al. 2022, 3PC, arXiv 2202.00998): d = g - h_local (rounded to
// g's dtype); h_local += d; returns the dense message of d.
at::Tensor lag_encode_cpu(const at::Tensor& g, at::Tensor& h_local);

// MoTEF's momentum and tracking step (Islamov, Gao, Stich 2024; efcomm.methods.MoTEF), per
// entry in float32, each operation rounded on its own:
//   s = lam * (g - M);  M = T(M + s);  V = T((V + s) + gamma * (G_mean - G)).
void motef_track_cpu(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G,
                     const at::Tensor& G_mean, double lam, double gamma);

// The 3PC lazy trigger: ||g - h_local||^2 > zeta ||g - y||^2, each difference rounded to
// float32 and the squares summed in double in index order. A 0-dim bool tensor.
at::Tensor lazy_trigger_cpu(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                            double zeta);

// AdaCGD's choice (Makarenko et al. 2022, arXiv 2211.00188) among Top-k rungs
// ks[0] < ks[1] < ...: 0 (send nothing) when ||d||^2 <= zeta ||g - y||^2 with
// d = g - h_local; else the first rung j + 1 whose error ||d - TopK_{ks[j]}(d)||^2 (the
// squares left out, summed in double from the largest) is <= zeta ||g - y||^2; else the
// last rung. Differences in float32, squares and sums in double. A 0-dim int32 tensor.
at::Tensor adacgd_choose_cpu(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                             at::IntArrayRef ks, double zeta);

// ---- Quantizers and Rand-k (csrc/quant_ops.cpp; rules in kernels/quant_codec.h) ----

// The random streams (kernels/counter_rng.h): stochastic rounding is keyed by the rank,
// Rand-k indices are shared by every rank.
uint64_t rounding_stream(int64_t step, int64_t bucket, int64_t rank);
uint64_t randk_stream(int64_t step, int64_t bucket);
// Rand-k's window start: a uniform offset in [0, numel) from the first two draws.
uint64_t randk_window_offset(int64_t numel, int64_t seed, int64_t step, int64_t bucket);

// The blockwise quantized message of x (layout: csrc/message_layout.h).
at::Tensor quantize_cpu(const at::Tensor& x, c10::string_view scheme, int64_t levels, int64_t block,
                        bool stochastic, int64_t seed, int64_t step, int64_t bucket, int64_t rank);

// EF21's worker step with a quantizer, fused: d = T(g - h_local); the message of Q(d) (as
// quantize); h_local = T(float(h_local) + v) with v the value each code decodes to.
at::Tensor ef21_quantize_cpu(const at::Tensor& g, at::Tensor& h_local, c10::string_view scheme,
                             int64_t levels, int64_t block, bool stochastic, int64_t seed, int64_t step,
                             int64_t bucket, int64_t rank);

// h += scale * (1/n) sum_j Q_j over n gathered quantized messages ([n, nbytes] uint8), or
// h += scale * sum_j w_j Q_j with weights: acc = sum_j float32(w_j * v_j) in rank order
// (w_j = 1 without weights); c = float32(acc * (1/n)) without weights, else acc;
// c = float32(c * scale); h = dtype(float(h) + c).
void quant_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme,
                          int64_t levels, int64_t block, double scale,
                          std::optional<at::ArrayRef<double>> weights);

// Rand-k with indices shared by every rank, keyed by (seed, step, bucket): `window` takes k
// consecutive entries (wrapping) from a uniform offset; otherwise k distinct uniform
// entries (the k smallest (draw, index) pairs), ascending. Indices as int64, message order.
at::Tensor randk_indices_cpu(const at::Tensor& x, int64_t k, int64_t seed, int64_t step,
                             int64_t bucket, bool window);
// The message: the k selected values (x's dtype), zero padding to 4 bytes.
at::Tensor randk_encode_cpu(const at::Tensor& x, int64_t k, int64_t seed, int64_t step,
                            int64_t bucket, bool window);
// h[idx_t] += c_t over the gathered Rand-k messages, c_t as in quant_decode_add_cpu.
void randk_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t seed,
                          int64_t step, int64_t bucket, bool window, double scale,
                          std::optional<at::ArrayRef<double>> weights);

#ifdef EFCOMM_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& x, int64_t k,
                                              const std::optional<at::Tensor>& threshold = std::nullopt);
at::Tensor topk_encode_cuda(const at::Tensor& x, int64_t k,
                            const std::optional<at::Tensor>& threshold = std::nullopt);
at::Tensor ef_topk_encode_cuda(const at::Tensor& g, at::Tensor& e, int64_t k,
                               const std::optional<at::Tensor>& threshold = std::nullopt);
at::Tensor ef21_topk_encode_cuda(const at::Tensor& g, at::Tensor& h_local, int64_t k,
                                 const std::optional<at::Tensor>& threshold = std::nullopt);
at::Tensor ef21_sgdm_topk_encode_cuda(const at::Tensor& g, at::Tensor& v, at::Tensor& h_local,
                                      int64_t k, double eta,
    const std::optional<at::Tensor>& threshold = std::nullopt);
at::Tensor econtrol_topk_encode_cuda(const at::Tensor& g, at::Tensor& e, at::Tensor& h_local,
                                     int64_t k, double eta,
    const std::optional<at::Tensor>& threshold = std::nullopt);
void topk_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, int64_t k,
                          std::optional<at::ArrayRef<double>> weights);
at::Tensor clip21_encode_cuda(const at::Tensor& g, at::Tensor& h_local, double tau);
void dense_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered,
                           std::optional<int64_t> world_size);
at::Tensor lag_encode_cuda(const at::Tensor& g, at::Tensor& h_local);
void motef_track_cuda(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G,
                      const at::Tensor& G_mean, double lam, double gamma);
at::Tensor lazy_trigger_cuda(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                             double zeta);
at::Tensor adacgd_choose_cuda(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                              at::IntArrayRef ks, double zeta);
at::Tensor quantize_cuda(const at::Tensor& x, c10::string_view scheme, int64_t levels, int64_t block,
                         bool stochastic, int64_t seed, int64_t step, int64_t bucket, int64_t rank);
at::Tensor ef21_quantize_cuda(const at::Tensor& g, at::Tensor& h_local, c10::string_view scheme,
                              int64_t levels, int64_t block, bool stochastic, int64_t seed, int64_t step,
                              int64_t bucket, int64_t rank);
void quant_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme,
                           int64_t levels, int64_t block, double scale,
                           std::optional<at::ArrayRef<double>> weights);
at::Tensor randk_indices_cuda(const at::Tensor& x, int64_t k, int64_t seed, int64_t step,
                              int64_t bucket, bool window);
at::Tensor randk_encode_cuda(const at::Tensor& x, int64_t k, int64_t seed, int64_t step,
                             int64_t bucket, bool window);
void randk_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t seed,
                           int64_t step, int64_t bucket, bool window, double scale,
                           std::optional<at::ArrayRef<double>> weights);
#endif

}  // namespace efcomm
