#include "csrc/checks.h"

#include <c10/util/Exception.h>

#include "kernels/quant_codec.h"

#include <cmath>
#include <cstdint>

namespace efcomm {
namespace {

void check_float_tensor(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.defined(), op, ": ", arg, " is undefined");
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, ": ",
              arg, " has dtype ", dtype, "; expected float32, bfloat16 or float16");
  TORCH_CHECK(!t.is_sparse(), op, ": ", arg, " must be a dense tensor");
  TORCH_CHECK(t.numel() <= kMaxSparsifiedNumel, op, ": ", arg, " has ", t.numel(),
              " elements; at most ", kMaxSparsifiedNumel, " fit int32 indices");
}

void check_k(int64_t k, int64_t numel, const char* op) {
  TORCH_CHECK(k >= 1, op, ": k (", k, ") must be at least 1");
  TORCH_CHECK(k <= numel, op, ": k (", k, ") exceeds the number of elements (", numel, ")");
}

}  // namespace

void check_threshold_hint(const std::optional<at::Tensor>& threshold, const at::Tensor& x, const char* op) {
  if (!threshold.has_value()) return;
  const at::Tensor& t = *threshold;
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": threshold has dtype ", t.scalar_type(),
              "; expected float32 (the hint [tau, fell_back])");
  TORCH_CHECK(t.numel() == 2 && t.is_contiguous(), op, ": threshold must be a contiguous tensor of 2 elements ",
              "(the hint [tau, fell_back]), got shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": threshold is on ", t.device(), " but x is on ", x.device());
}

void check_topk_args(const at::Tensor& x, int64_t k, const char* op) {
  check_float_tensor(x, op, "x");
  check_k(k, x.numel(), op);
}

void check_stateful_encode_args(const at::Tensor& g, const at::Tensor& state,
                                const char* state_name, int64_t k, const char* op) {
  check_float_tensor(g, op, "g");
  check_float_tensor(state, op, state_name);
  TORCH_CHECK(state.sizes() == g.sizes(), op, ": ", state_name, " has shape ", state.sizes(),
              " but g has shape ", g.sizes());
  TORCH_CHECK(state.scalar_type() == g.scalar_type(), op, ": ", state_name, " has dtype ",
              state.scalar_type(), " but g has dtype ", g.scalar_type());
  TORCH_CHECK(state.device() == g.device(), op, ": ", state_name, " is on ", state.device(),
              " but g is on ", g.device());
  TORCH_CHECK(state.is_contiguous(), op, ": ", state_name,
              " (updated in place) must be contiguous; got strides ", state.strides());
  check_k(k, g.numel(), op);
}

void check_two_state_encode_args(const at::Tensor& g, const at::Tensor& first,
                                 const char* first_name, const at::Tensor& h_local, int64_t k,
                                 double eta, const char* op) {
  check_stateful_encode_args(g, first, first_name, k, op);
  check_stateful_encode_args(g, h_local, "h_local", k, op);
  TORCH_CHECK(eta >= 0.0 && eta <= 1.0, op, ": eta (", eta, ") must be in [0, 1]");
}

void check_motef_track_args(const at::Tensor& g, const at::Tensor& M, const at::Tensor& V, const at::Tensor& G,
                            const at::Tensor& G_mean, double lam, double gamma, const char* op) {
  check_stateful_encode_args(g, M, "M", 1, op);
  check_stateful_encode_args(g, V, "V", 1, op);
  check_stateful_encode_args(g, G, "G", 1, op);
  check_stateful_encode_args(g, G_mean, "G_mean", 1, op);
  TORCH_CHECK(lam > 0.0 && lam <= 1.0, op, ": lam (", lam, ") must be in (0, 1]");
  TORCH_CHECK(gamma > 0.0 && gamma <= 1.0, op, ": gamma (", gamma, ") must be in (0, 1]");
}

void check_clip21_args(const at::Tensor& g, const at::Tensor& h_local, double tau, const char* op) {
  check_stateful_encode_args(g, h_local, "h_local", 1, op);
  TORCH_CHECK(tau > 0.0 && std::isfinite(tau), op, ": tau (", tau, ") must be positive and finite");
}

namespace {

// h updated in place with the rows of `gathered`, which must be [world_size, row_bytes].
void check_gathered(const at::Tensor& h, const at::Tensor& gathered, const char* op) {
  check_float_tensor(h, op, "h");
  TORCH_CHECK(h.is_contiguous(), op, ": h (updated in place) must be contiguous; got strides ",
              h.strides());
  TORCH_CHECK(gathered.defined(), op, ": gathered is undefined");
  TORCH_CHECK(gathered.scalar_type() == at::kByte, op, ": gathered has dtype ",
              gathered.scalar_type(), "; expected uint8");
  TORCH_CHECK(gathered.dim() == 2, op, ": gathered must be 2-D [world_size, message_bytes]; got shape ",
              gathered.sizes());
  TORCH_CHECK(gathered.size(0) >= 1, op, ": gathered holds no messages (shape ",
              gathered.sizes(), ")");
  TORCH_CHECK(gathered.is_contiguous(), op, ": gathered must be contiguous; got strides ",
              gathered.strides());
  TORCH_CHECK(gathered.device() == h.device(), op, ": gathered is on ", gathered.device(),
              " but h is on ", h.device());
  TORCH_CHECK(reinterpret_cast<std::uintptr_t>(gathered.const_data_ptr()) % 4 == 0, op,
              ": gathered must start at a 4-byte aligned address (storage offset ",
              gathered.storage_offset(), ")");
}

void check_weights(std::optional<at::ArrayRef<double>> weights, int64_t rows, const char* op) {
  if (!weights.has_value()) return;
  TORCH_CHECK(static_cast<int64_t>(weights->size()) == rows, op, ": weights has ",
              weights->size(), " entries but gathered holds ", rows, " messages");
  for (const double w : *weights) {
    TORCH_CHECK(std::isfinite(w), op, ": weights holds a non-finite value (", w, ")");
  }
}

}  // namespace

void check_lazy_trigger_args(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                             double zeta, const char* op) {
  check_stateful_encode_args(g, h_local, "h_local", 1, op);
  check_stateful_encode_args(g, y, "y", 1, op);
  TORCH_CHECK(zeta >= 0.0 && std::isfinite(zeta), op, ": zeta (", zeta, ") must be non-negative and finite");
}

void check_ladder(at::IntArrayRef ks, int64_t numel, const char* op) {
  TORCH_CHECK(!ks.empty(), op, ": ks is empty");
  for (size_t j = 0; j < ks.size(); ++j) {
    check_k(ks[j], numel, op);
    TORCH_CHECK(j == 0 || ks[j] > ks[j - 1], op, ": ks (", ks, ") must be strictly increasing");
  }
}

void check_dense_decode_args(const at::Tensor& h, const at::Tensor& gathered,
                             std::optional<int64_t> world_size, const char* op) {
  check_gathered(h, gathered, op);
  if (world_size.has_value()) {
    TORCH_CHECK(*world_size >= gathered.size(0), op, ": world_size (", *world_size,
                ") is smaller than the number of gathered messages (", gathered.size(0), ")");
  }
  TORCH_CHECK(h.numel() >= 1, op, ": h is empty");
  const int64_t nbytes = dense_message_nbytes(h.numel(), h.scalar_type());
  TORCH_CHECK(gathered.size(1) == nbytes, op, ": gathered rows have ", gathered.size(1),
              " bytes but a dense message of ", h.numel(), " ", h.scalar_type(), " values has ",
              nbytes, " bytes");
}

TopkMessageLayout check_topk_decode_args(const at::Tensor& h, const at::Tensor& gathered,
                                         int64_t k, std::optional<at::ArrayRef<double>> weights,
                                         const char* op) {
  check_gathered(h, gathered, op);
  check_k(k, h.numel(), op);
  const TopkMessageLayout layout = topk_message_layout(k, h.scalar_type());
  TORCH_CHECK(gathered.size(1) == layout.nbytes, op, ": gathered rows have ", gathered.size(1),
              " bytes but a message of k=", k, " ", h.scalar_type(), " values has ",
              layout.nbytes, " bytes");
  check_weights(weights, gathered.size(0), op);
  return layout;
}

namespace {

void check_stream_args(int64_t step, int64_t rank, const char* op) {
  TORCH_CHECK(step >= 0, op, ": step (", step, ") must be non-negative");
  TORCH_CHECK(rank >= 0, op, ": rank (", rank, ") must be non-negative");
}

void check_scale(double scale, const char* op) {
  TORCH_CHECK(std::isfinite(scale), op, ": scale (", scale, ") must be finite");
}

}  // namespace

QuantMessageLayout check_quantize_args(const at::Tensor& x, c10::string_view scheme, int64_t levels,
                                       int64_t block, bool stochastic, int64_t step, int64_t rank,
                                       int32_t* scheme_id, const char* op) {
  check_float_tensor(x, op, "x");
  *scheme_id = quant_scheme(scheme, op);
  const QuantMessageLayout layout = quant_message_layout(x.numel(), *scheme_id, levels, block, op);
  if (*scheme_id == quant::kQSGD || *scheme_id == quant::kNatural) {
    TORCH_CHECK(stochastic, op, ": stochastic (false) must be true for scheme '", scheme,
                "' (it is defined by its unbiased stochastic rounding)");
  }
  if (*scheme_id == quant::kSign) {
    TORCH_CHECK(!stochastic, op, ": stochastic (true) must be false for scheme 'sign'");
  }
  check_stream_args(step, rank, op);
  return layout;
}

QuantMessageLayout check_ef21_quantize_args(const at::Tensor& g, const at::Tensor& h_local,
                                            c10::string_view scheme, int64_t levels, int64_t block,
                                            bool stochastic, int64_t step, int64_t rank, int32_t* scheme_id) {
  const char* op = "ef21_quantize_";
  check_stateful_encode_args(g, h_local, "h_local", 1, op);
  return check_quantize_args(g, scheme, levels, block, stochastic, step, rank, scheme_id, op);
}

QuantMessageLayout check_quant_decode_args(const at::Tensor& h, const at::Tensor& gathered,
                                           c10::string_view scheme, int64_t levels, int64_t block,
                                           double scale, std::optional<at::ArrayRef<double>> weights,
                                           int32_t* scheme_id, const char* op) {
  check_gathered(h, gathered, op);
  *scheme_id = quant_scheme(scheme, op);
  const QuantMessageLayout layout = quant_message_layout(h.numel(), *scheme_id, levels, block, op);
  TORCH_CHECK(gathered.size(1) == layout.nbytes, op, ": gathered rows have ", gathered.size(1),
              " bytes but a '", scheme, "' message of ", h.numel(), " entries (levels=", levels,
              ", block=", block, ") has ", layout.nbytes, " bytes");
  check_scale(scale, op);
  check_weights(weights, gathered.size(0), op);
  return layout;
}

void check_randk_args(const at::Tensor& x, int64_t k, int64_t step, const char* op) {
  check_float_tensor(x, op, "x");
  check_k(k, x.numel(), op);
  check_stream_args(step, 0, op);
}

void check_randk_decode_args(const at::Tensor& h, const at::Tensor& gathered, int64_t k, int64_t step,
                             double scale, std::optional<at::ArrayRef<double>> weights,
                             const char* op) {
  check_gathered(h, gathered, op);
  check_randk_args(h, k, step, op);
  const int64_t nbytes = dense_message_nbytes(k, h.scalar_type());
  TORCH_CHECK(gathered.size(1) == nbytes, op, ": gathered rows have ", gathered.size(1),
              " bytes but a Rand-k message of k=", k, " ", h.scalar_type(), " values has ",
              nbytes, " bytes");
  check_scale(scale, op);
  check_weights(weights, gathered.size(0), op);
}

}  // namespace efcomm
