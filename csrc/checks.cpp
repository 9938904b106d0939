#include "csrc/checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/quant_schemes.h"

namespace efcomm {
namespace {

void check_float_tensor(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.defined(), op, ": ", arg, " is undefined");
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, ": ", arg, " has dtype ", dtype,
              "; expected float32, bfloat16 or float16");
  TORCH_CHECK(!t.is_sparse(), op, ": ", arg, " must be a dense tensor");
  TORCH_CHECK(t.numel() <= kMaxSparsifiedNumel, op, ": ", arg, " has ", t.numel(), " elements; at most ",
              kMaxSparsifiedNumel, " fit int32 indices");
}

void check_scale(double scale, const char* op) {
  TORCH_CHECK(std::isfinite(scale), op, ": scale (", scale, ") must be finite");
}

void check_stream_args(int64_t step, int64_t rank, const char* op) {
  TORCH_CHECK(step >= 0, op, ": step (", step, ") must be non-negative");
  TORCH_CHECK(rank >= 0, op, ": rank (", rank, ") must be non-negative");
}

// `state` (named state_name), updated in place from `source` (named source_name).
void check_state(const at::Tensor& source, const char* source_name, const at::Tensor& state, const char* state_name,
                 const char* op) {
  check_float_tensor(state, op, state_name);
  TORCH_CHECK(state.sizes() == source.sizes(), op, ": ", state_name, " has shape ", state.sizes(), " but ", source_name,
              " has shape ", source.sizes());
  TORCH_CHECK(state.scalar_type() == source.scalar_type(), op, ": ", state_name, " has dtype ", state.scalar_type(),
              " but ", source_name, " has dtype ", source.scalar_type());
  TORCH_CHECK(state.device() == source.device(), op, ": ", state_name, " is on ", state.device(), " but ", source_name,
              " is on ", source.device());
  TORCH_CHECK(state.is_contiguous(), op, ": ", state_name, " (updated in place) must be contiguous; got strides ",
              state.strides());
}

// g and a tensor of the same shape, dtype and device that is read (contiguity not needed).
void check_like(const at::Tensor& g, const at::Tensor& other, const char* other_name, const char* op) {
  check_float_tensor(other, op, other_name);
  TORCH_CHECK(other.sizes() == g.sizes(), op, ": ", other_name, " has shape ", other.sizes(), " but g has shape ",
              g.sizes());
  TORCH_CHECK(other.scalar_type() == g.scalar_type(), op, ": ", other_name, " has dtype ", other.scalar_type(),
              " but g has dtype ", g.scalar_type());
  TORCH_CHECK(other.device() == g.device(), op, ": ", other_name, " is on ", other.device(), " but g is on ",
              g.device());
}

// h updated in place with the rows of `gathered`, which must be [rows, nbytes].
void check_gathered(const at::Tensor& h, const at::Tensor& gathered, int64_t nbytes, const char* what, double scale,
                    const std::optional<at::Tensor>& weights, const char* op) {
  TORCH_CHECK(gathered.defined(), op, ": gathered is undefined");
  TORCH_CHECK(gathered.scalar_type() == at::kByte, op, ": gathered has dtype ", gathered.scalar_type(),
              "; expected uint8");
  TORCH_CHECK(gathered.dim() == 2, op, ": gathered must be 2-D [rows, message_bytes]; got shape ", gathered.sizes());
  TORCH_CHECK(gathered.size(0) >= 1, op, ": gathered holds no messages (shape ", gathered.sizes(), ")");
  TORCH_CHECK(gathered.is_contiguous(), op, ": gathered must be contiguous; got strides ", gathered.strides());
  TORCH_CHECK(gathered.device() == h.device(), op, ": gathered is on ", gathered.device(), " but h is on ", h.device());
  TORCH_CHECK(reinterpret_cast<std::uintptr_t>(gathered.const_data_ptr()) % 4 == 0, op,
              ": gathered must start at a 4-byte aligned address (storage offset ", gathered.storage_offset(), ")");
  TORCH_CHECK(gathered.size(1) == nbytes, op, ": gathered rows have ", gathered.size(1), " bytes but ", what, " has ",
              nbytes, " bytes");
  check_scale(scale, op);
  if (!weights.has_value()) return;
  const at::Tensor& w = *weights;
  TORCH_CHECK(w.scalar_type() == at::kFloat, op, ": weights has dtype ", w.scalar_type(), "; expected float32");
  TORCH_CHECK(w.dim() == 1 && w.is_contiguous(), op, ": weights must be a contiguous 1-D tensor; got shape ", w.sizes(),
              " and strides ", w.strides());
  TORCH_CHECK(w.numel() == gathered.size(0), op, ": weights has ", w.numel(), " entries but gathered holds ",
              gathered.size(0), " messages");
  TORCH_CHECK(w.device() == h.device(), op, ": weights is on ", w.device(), " but h is on ", h.device());
  if (w.is_cpu()) {
    const float* values = w.const_data_ptr<float>();
    for (int64_t j = 0; j < w.numel(); ++j) {
      TORCH_CHECK(std::isfinite(values[j]), op, ": weights holds a non-finite value (", values[j], " at ", j, ")");
    }
  }
}

void check_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, double scale, const char* op) {
  check_float_tensor(a, op, "a");
  if (b.has_value()) check_state(a, "a", *b, "b", op);
  check_scale(scale, op);
}

void check_decoded(const at::Tensor& h, const char* op) {
  check_float_tensor(h, op, "h");
  TORCH_CHECK(h.is_contiguous(), op, ": h (updated in place) must be contiguous; got strides ", h.strides());
}

void check_threshold_hint(const std::optional<at::Tensor>& threshold, const at::Tensor& x, const char* x_name,
                          const char* op) {
  if (!threshold.has_value()) return;
  const at::Tensor& t = *threshold;
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": threshold has dtype ", t.scalar_type(),
              "; expected float32 (the hint [tau, fell_back])");
  TORCH_CHECK(t.numel() == 2 && t.is_contiguous(), op, ": threshold must be a contiguous tensor of 2 elements ",
              "(the hint [tau, fell_back]), got shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": threshold is on ", t.device(), " but ", x_name, " is on ", x.device());
}

}  // namespace

void check_k(int64_t k, int64_t numel, const char* op) {
  TORCH_CHECK(k >= 1, op, ": k (", k, ") must be at least 1");
  TORCH_CHECK(k <= numel, op, ": k (", k, ") exceeds the number of elements (", numel, ")");
}

void check_topk_args(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& threshold) {
  check_float_tensor(x, "topk", "x");
  check_k(k, x.numel(), "topk");
  check_threshold_hint(threshold, x, "x", "topk");
}

void check_randk_args(const at::Tensor& x, int64_t k, int64_t step, std::optional<int64_t> rank, const char* op) {
  check_float_tensor(x, op, "x");
  check_k(k, x.numel(), op);
  check_stream_args(step, rank.value_or(0), op);
}

SparseFormat check_topk_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, double scale,
                                    const std::optional<at::Tensor>& threshold,
                                    std::optional<c10::ScalarType> value_dtype, int64_t index_bits) {
  const char* op = "topk_encode_";
  check_encode_args(a, b, scale, op);
  check_k(k, a.numel(), op);
  check_threshold_hint(threshold, a, "a", op);
  return sparse_format(a.scalar_type(), value_dtype, index_bits, op);
}

void check_randk_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, int64_t step,
                             double scale, std::optional<int64_t> rank) {
  const char* op = "randk_encode_";
  check_encode_args(a, b, scale, op);
  check_randk_args(a, k, step, rank, op);
}

QuantConfig check_quant_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, c10::string_view scheme,
                                    int64_t levels, int64_t block, bool stochastic, int64_t step, int64_t rank,
                                    double scale) {
  const char* op = "quant_encode_";
  check_encode_args(a, b, scale, op);
  const QuantConfig config = quant_config(a.numel(), scheme, levels, block, op);
  quant::with_codec(config.scheme, [&](auto codec) {
    using Codec = decltype(codec);
    if constexpr (Codec::kRounding == quant::Rounding::kStochastic) {
      TORCH_CHECK(stochastic, op, ": stochastic (false) must be true for scheme '", scheme,
                  "' (it is defined by its unbiased stochastic rounding)");
    }
    if constexpr (Codec::kRounding == quant::Rounding::kNearest) {
      TORCH_CHECK(!stochastic, op, ": stochastic (true) must be false for scheme '", scheme, "'");
    }
  });
  check_stream_args(step, rank, op);
  return config;
}

void check_dense_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, std::optional<double> clip,
                             double scale) {
  const char* op = "dense_encode_";
  check_encode_args(a, b, scale, op);
  if (!clip.has_value()) return;
  TORCH_CHECK(*clip > 0.0 && std::isfinite(*clip), op, ": clip (", *clip, ") must be positive and finite");
}

wire::ChunkTopkLayout check_chunktopk_encode_args(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k,
                                                  int64_t chunk, int64_t bits, double scale) {
  const char* op = "chunktopk_encode_";
  check_encode_args(a, b, scale, op);
  TORCH_CHECK(a.numel() >= 1, op, ": a is empty");
  return chunk_topk_config(a.numel(), k, chunk, bits, op);
}

SparseFormat check_topk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k, double scale,
                                    const std::optional<at::Tensor>& weights,
                                    std::optional<c10::ScalarType> value_dtype, int64_t index_bits) {
  const char* op = "topk_decode_add_";
  check_decoded(h, op);
  check_k(k, h.numel(), op);
  const SparseFormat format = sparse_format(h.scalar_type(), value_dtype, index_bits, op);
  const std::string what = std::string("a ") + (format.compact ? "compact " : "") +
                           "Top-k message of k=" + std::to_string(k) + " " + c10::toString(format.value_dtype) +
                           " values";
  check_gathered(h, gathered, sparse_message_nbytes(h.numel(), k, format), what.c_str(), scale, weights, op);
  return format;
}

wire::DenseLayout check_randk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t step,
                                          double scale, const std::optional<at::Tensor>& weights) {
  const char* op = "randk_decode_add_";
  check_decoded(h, op);
  check_randk_args(h, k, step, std::nullopt, op);
  const wire::DenseLayout layout = dense_layout_of(k, h.scalar_type());
  const std::string what =
      "a Rand-k message of k=" + std::to_string(k) + " " + c10::toString(h.scalar_type()) + " values";
  check_gathered(h, gathered, layout.nbytes, what.c_str(), scale, weights, op);
  return layout;
}

QuantConfig check_quant_decode_args(const at::Tensor& h, const at::Tensor& gathered, c10::string_view scheme,
                                    int64_t levels, int64_t block, double scale,
                                    const std::optional<at::Tensor>& weights) {
  const char* op = "quant_decode_add_";
  check_decoded(h, op);
  const QuantConfig config = quant_config(h.numel(), scheme, levels, block, op);
  const std::string what = "a '" + std::string(scheme) + "' message of " + std::to_string(h.numel()) +
                           " entries (levels=" + std::to_string(levels) + ", block=" + std::to_string(block) + ")";
  check_gathered(h, gathered, config.layout.nbytes, what.c_str(), scale, weights, op);
  return config;
}

wire::DenseLayout check_dense_decode_args(const at::Tensor& h, const at::Tensor& gathered, double scale,
                                          const std::optional<at::Tensor>& weights) {
  const char* op = "dense_decode_add_";
  check_decoded(h, op);
  TORCH_CHECK(h.numel() >= 1, op, ": h is empty");
  const wire::DenseLayout layout = dense_layout_of(h.numel(), h.scalar_type());
  const std::string what =
      "a dense message of " + std::to_string(h.numel()) + " " + c10::toString(h.scalar_type()) + " values";
  check_gathered(h, gathered, layout.nbytes, what.c_str(), scale, weights, op);
  return layout;
}

wire::ChunkTopkLayout check_chunktopk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k,
                                                  int64_t chunk, int64_t bits, double scale,
                                                  const std::optional<at::Tensor>& weights) {
  const char* op = "chunktopk_decode_add_";
  check_decoded(h, op);
  TORCH_CHECK(h.numel() >= 1, op, ": h is empty");
  const wire::ChunkTopkLayout layout = chunk_topk_config(h.numel(), k, chunk, bits, op);
  const std::string what = "a chunktopk message of " + std::to_string(h.numel()) + " entries (k=" + std::to_string(k) +
                           ", chunk=" + std::to_string(chunk) + ", bits=" + std::to_string(bits) + ")";
  check_gathered(h, gathered, layout.nbytes, what.c_str(), scale, weights, op);
  return layout;
}

void check_motef_track_args(const at::Tensor& g, const at::Tensor& M, const at::Tensor& V, const at::Tensor& G,
                            const at::Tensor& G_mean, double lam, double gamma, const char* op) {
  check_float_tensor(g, op, "g");
  check_state(g, "g", M, "M", op);
  check_state(g, "g", V, "V", op);
  check_like(g, G, "G", op);
  check_like(g, G_mean, "G_mean", op);
  TORCH_CHECK(G.is_contiguous() && G_mean.is_contiguous(), op, ": G and G_mean must be contiguous");
  TORCH_CHECK(lam > 0.0 && lam <= 1.0, op, ": lam (", lam, ") must be in (0, 1]");
  TORCH_CHECK(gamma > 0.0 && gamma <= 1.0, op, ": gamma (", gamma, ") must be in (0, 1]");
}

void check_lazy_trigger_args(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, double zeta,
                             const char* op) {
  check_float_tensor(g, op, "g");
  check_like(g, h_local, "h_local", op);
  check_like(g, y, "y", op);
  TORCH_CHECK(h_local.is_contiguous() && y.is_contiguous(), op, ": h_local and y must be contiguous");
  TORCH_CHECK(zeta >= 0.0 && std::isfinite(zeta), op, ": zeta (", zeta, ") must be non-negative and finite");
}

void check_ladder(at::IntArrayRef ks, int64_t numel, const char* op) {
  TORCH_CHECK(!ks.empty(), op, ": ks is empty");
  for (size_t j = 0; j < ks.size(); ++j) {
    check_k(ks[j], numel, op);
    TORCH_CHECK(j == 0 || ks[j] > ks[j - 1], op, ": ks (", ks, ") must be strictly increasing");
  }
}

}  // namespace efcomm
