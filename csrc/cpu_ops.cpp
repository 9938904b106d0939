// CPU reference of every efcomm op: plain loops, written to be read. The CUDA
// implementations are checked against these, bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include "csrc/checks.h"
#include "csrc/dispatch.h"
#include "csrc/message_layout.h"
#include "csrc/ops.h"
#include "kernels/topk_hint.h"

namespace efcomm {
namespace {

// True when entry a of x ranks before entry b: larger magnitude first, NaN above
// everything, and among equal magnitudes the lower index first. This total order makes
// the Top-k set unique.
template <typename T>
struct RanksBefore {
  const T* x;
  bool operator()(int64_t a, int64_t b) const {
    const float ma = std::fabs(static_cast<float>(x[a]));
    const float mb = std::fabs(static_cast<float>(x[b]));
    const bool nan_a = std::isnan(ma);
    const bool nan_b = std::isnan(mb);
    if (nan_a != nan_b) return nan_a;
    if (!nan_a && ma != mb) return ma > mb;
    return a < b;
  }
};

// The threshold Top-k hint (kernels/topk_hint.h): whether the CUDA path finds the Top-k
// among the entries that reach hint[0] (else it falls back to two passes), and the next
// hint from the k-th largest magnitude. The selection does not depend on it.
template <typename T>
void update_hint(const T* x, int64_t n, int64_t k, float kth_magnitude, float* hint) {
  const float tau = hint[0];
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    if (std::isnan(v) || std::fabs(v) >= tau) ++count;
  }
  const int64_t cap = std::min(n, kernels::kTopkHintCapFactor * k);
  const float next = kernels::kTopkHintMargin * kth_magnitude;
  hint[0] = std::isfinite(next) && next > 0.0f ? next : 0.0f;
  hint[1] = k <= count && count <= cap ? 0.0f : 1.0f;
}

// The k indices of x[0..n) that rank first, in ascending order; with hint, updates it.
template <typename T>
std::vector<int64_t> select_topk(const T* x, int64_t n, int64_t k, float* hint = nullptr) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), RanksBefore<T>{x});
  if (hint != nullptr) update_hint(x, n, k, std::fabs(static_cast<float>(x[order[k - 1]])), hint);
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

float* hint_ptr(const std::optional<at::Tensor>& threshold) {
  return threshold.has_value() ? threshold->mutable_data_ptr<float>() : nullptr;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& x, int64_t k,
                                             const std::optional<at::Tensor>& threshold) {
  check_topk_args(x, k, "topk");
  check_threshold_hint(threshold, x, "topk");
  const at::Tensor xc = x.contiguous();
  at::Tensor values = at::empty({k}, x.options());
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kInt));
  EFCOMM_DISPATCH_FLOAT_TYPES(x.scalar_type(), "topk_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const std::vector<int64_t> selected = select_topk(xp, xc.numel(), k, hint_ptr(threshold));
    scalar_t* vp = values.mutable_data_ptr<scalar_t>();
    int32_t* ip = indices.mutable_data_ptr<int32_t>();
    for (int64_t t = 0; t < k; ++t) {
      vp[t] = xp[selected[t]];
      ip[t] = static_cast<int32_t>(selected[t]);
    }
  });
  return {values, indices};
}

namespace {

// Writes the message of the selected entries of src (layout in message_layout.h).
template <typename T>
at::Tensor pack_message(const T* src, const std::vector<int64_t>& selected,
                        const at::TensorOptions& options) {
  const int64_t k = static_cast<int64_t>(selected.size());
  const TopkMessageLayout layout = topk_message_layout(k, c10::CppTypeToScalarType<T>::value);
  at::Tensor message = at::zeros({layout.nbytes}, options.dtype(at::kByte));
  uint8_t* bytes = message.mutable_data_ptr<uint8_t>();
  auto* values = reinterpret_cast<T*>(bytes);
  auto* indices = reinterpret_cast<int32_t*>(bytes + layout.indices_offset);
  for (int64_t t = 0; t < k; ++t) {
    values[t] = src[selected[t]];
    indices[t] = static_cast<int32_t>(selected[t]);
  }
  return message;
}

}  // namespace

at::Tensor topk_encode_cpu(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& threshold) {
  check_topk_args(x, k, "topk_encode");
  check_threshold_hint(threshold, x, "topk_encode");
  const at::Tensor xc = x.contiguous();
  at::Tensor message;
  EFCOMM_DISPATCH_FLOAT_TYPES(x.scalar_type(), "topk_encode_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    message = pack_message(xp, select_topk(xp, xc.numel(), k, hint_ptr(threshold)), x.options());
  });
  return message;
}

at::Tensor ef_topk_encode_cpu(const at::Tensor& g, at::Tensor& e, int64_t k,
                              const std::optional<at::Tensor>& threshold) {
  check_stateful_encode_args(g, e, "e", k, "ef_topk_encode_");
  check_threshold_hint(threshold, g, "ef_topk_encode_");
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  at::Tensor message;
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "ef_topk_encode_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* ep = e.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {  // e becomes p = g + e
      ep[i] = static_cast<scalar_t>(static_cast<float>(gp[i]) + static_cast<float>(ep[i]));
    }
    const std::vector<int64_t> selected = select_topk(ep, n, k, hint_ptr(threshold));
    message = pack_message(ep, selected, g.options());
    for (const int64_t i : selected) {  // e = p - c: the sent entries leave the error
      ep[i] = static_cast<scalar_t>(static_cast<float>(ep[i]) - static_cast<float>(ep[i]));
    }
  });
  return message;
}

at::Tensor ef21_topk_encode_cpu(const at::Tensor& g, at::Tensor& h_local, int64_t k,
                                const std::optional<at::Tensor>& threshold) {
  check_stateful_encode_args(g, h_local, "h_local", k, "ef21_topk_encode_");
  check_threshold_hint(threshold, g, "ef21_topk_encode_");
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  at::Tensor message;
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "ef21_topk_encode_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* hp = h_local.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> d(n);
    for (int64_t i = 0; i < n; ++i) {
      d[i] = static_cast<scalar_t>(static_cast<float>(gp[i]) - static_cast<float>(hp[i]));
    }
    const std::vector<int64_t> selected = select_topk(d.data(), n, k, hint_ptr(threshold));
    message = pack_message(d.data(), selected, g.options());
    for (const int64_t i : selected) {
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + static_cast<float>(d[i]));
    }
  });
  return message;
}

at::Tensor ef21_sgdm_topk_encode_cpu(const at::Tensor& g, at::Tensor& v, at::Tensor& h_local,
                                     int64_t k, double eta, const std::optional<at::Tensor>& threshold) {
  check_two_state_encode_args(g, v, "v", h_local, k, eta, "ef21_sgdm_topk_encode_");
  check_threshold_hint(threshold, g, "ef21_sgdm_topk_encode_");
  const float keep = static_cast<float>(1.0 - eta);
  const float take = static_cast<float>(eta);
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  at::Tensor message;
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "ef21_sgdm_topk_encode_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* vp = v.mutable_data_ptr<scalar_t>();
    scalar_t* hp = h_local.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> d(n);
    for (int64_t i = 0; i < n; ++i) {
      const float momentum = keep * static_cast<float>(vp[i]);
      vp[i] = static_cast<scalar_t>(momentum + take * static_cast<float>(gp[i]));
      d[i] = static_cast<scalar_t>(static_cast<float>(vp[i]) - static_cast<float>(hp[i]));
    }
    const std::vector<int64_t> selected = select_topk(d.data(), n, k, hint_ptr(threshold));
    message = pack_message(d.data(), selected, g.options());
    for (const int64_t i : selected) {
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + static_cast<float>(d[i]));
    }
  });
  return message;
}

at::Tensor econtrol_topk_encode_cpu(const at::Tensor& g, at::Tensor& e, at::Tensor& h_local,
                                    int64_t k, double eta, const std::optional<at::Tensor>& threshold) {
  check_two_state_encode_args(g, e, "e", h_local, k, eta, "econtrol_topk_encode_");
  check_threshold_hint(threshold, g, "econtrol_topk_encode_");
  const float eta_f = static_cast<float>(eta);
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  at::Tensor message;
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "econtrol_topk_encode_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* ep = e.mutable_data_ptr<scalar_t>();
    scalar_t* hp = h_local.mutable_data_ptr<scalar_t>();
    std::vector<scalar_t> p(n);
    for (int64_t i = 0; i < n; ++i) {
      const auto r = static_cast<scalar_t>(static_cast<float>(gp[i]) - static_cast<float>(hp[i]));
      const auto feedback = static_cast<scalar_t>(eta_f * static_cast<float>(ep[i]));
      p[i] = static_cast<scalar_t>(static_cast<float>(r) + static_cast<float>(feedback));
      ep[i] = static_cast<scalar_t>(static_cast<float>(ep[i]) + static_cast<float>(r));
    }
    const std::vector<int64_t> selected = select_topk(p.data(), n, k, hint_ptr(threshold));
    message = pack_message(p.data(), selected, g.options());
    for (const int64_t i : selected) {  // delta = p on the sent entries
      ep[i] = static_cast<scalar_t>(static_cast<float>(ep[i]) - static_cast<float>(p[i]));
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + static_cast<float>(p[i]));
    }
  });
  return message;
}

void topk_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, int64_t k,
                         std::optional<at::ArrayRef<double>> weights) {
  const TopkMessageLayout layout =
      check_topk_decode_args(h, gathered, k, weights, "topk_decode_add_");
  const int64_t world = gathered.size(0);
  const int64_t n = h.numel();
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "topk_decode_add_cpu", [&] {
    std::vector<float> acc(n, 0.0f);
    std::vector<bool> named(n, false);  // entries no message names stay as they are
    const uint8_t* rows = gathered.const_data_ptr<uint8_t>();
    for (int64_t j = 0; j < world; ++j) {  // rank order: the same sum on every rank
      const uint8_t* row = rows + j * layout.nbytes;
      const auto* values = reinterpret_cast<const scalar_t*>(row);
      const auto* indices = reinterpret_cast<const int32_t*>(row + layout.indices_offset);
      const float weight = weights.has_value() ? static_cast<float>((*weights)[j]) : 1.0f;
      for (int64_t t = 0; t < k; ++t) {
        const int64_t i = indices[t];
        TORCH_CHECK(i >= 0 && i < n, "topk_decode_add_: message of rank ", j, " holds index ",
                    i, " outside [0, ", n, ")");
        TORCH_CHECK(t == 0 || indices[t - 1] < i, "topk_decode_add_: message of rank ", j,
                    " holds indices out of ascending order (", indices[t > 0 ? t - 1 : 0], " then ", i,
                    " at position ", t, ")");
        acc[i] += weight * static_cast<float>(values[t]);
        named[i] = true;
      }
    }
    const float scale = weights.has_value() ? 1.0f : 1.0f / static_cast<float>(world);
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (!named[i]) continue;
      const float update = acc[i] * scale;
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + update);
    }
  });
}

at::Tensor clip21_encode_cpu(const at::Tensor& g, at::Tensor& h_local, double tau) {
  check_clip21_args(g, h_local, tau, "clip21_encode_");
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  at::Tensor message = at::zeros({dense_message_nbytes(n, g.scalar_type())}, g.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "clip21_encode_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* hp = h_local.mutable_data_ptr<scalar_t>();
    auto* c = reinterpret_cast<scalar_t*>(message.mutable_data_ptr<uint8_t>());
    double squares = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      c[i] = static_cast<scalar_t>(static_cast<float>(gp[i]) - static_cast<float>(hp[i]));
      const double v = static_cast<float>(c[i]);
      squares += v * v;
    }
    const double norm = std::sqrt(squares);
    if (norm > tau) {  // clip: c = (tau / ||d||) d
      const auto factor = static_cast<float>(tau / norm);
      for (int64_t i = 0; i < n; ++i) c[i] = static_cast<scalar_t>(static_cast<float>(c[i]) * factor);
    }
    for (int64_t i = 0; i < n; ++i) {
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + static_cast<float>(c[i]));
    }
  });
  return message;
}

void dense_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered,
                          std::optional<int64_t> world_size) {
  check_dense_decode_args(h, gathered, world_size, "dense_decode_add_");
  const int64_t world = gathered.size(0);
  const int64_t n = h.numel();
  const int64_t row_bytes = gathered.size(1);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "dense_decode_add_cpu", [&] {
    std::vector<float> acc(n, 0.0f);
    std::vector<bool> named(n, false);  // entries no message names stay as they are
    const uint8_t* rows = gathered.const_data_ptr<uint8_t>();
    for (int64_t j = 0; j < world; ++j) {  // rank order
      const auto* values = reinterpret_cast<const scalar_t*>(rows + j * row_bytes);
      for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<float>(values[i]);
    }
    const float inv_world = 1.0f / static_cast<float>(world_size.value_or(world));
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const float mean = acc[i] * inv_world;
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + mean);
    }
  });
}

at::Tensor lag_encode_cpu(const at::Tensor& g, at::Tensor& h_local) {
  check_stateful_encode_args(g, h_local, "h_local", 1, "lag_encode_");
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  at::Tensor message = at::zeros({dense_message_nbytes(n, g.scalar_type())}, g.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "lag_encode_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* hp = h_local.mutable_data_ptr<scalar_t>();
    auto* d = reinterpret_cast<scalar_t*>(message.mutable_data_ptr<uint8_t>());
    for (int64_t i = 0; i < n; ++i) {
      d[i] = static_cast<scalar_t>(static_cast<float>(gp[i]) - static_cast<float>(hp[i]));
      hp[i] = static_cast<scalar_t>(static_cast<float>(hp[i]) + static_cast<float>(d[i]));
    }
  });
  return message;
}

void motef_track_cpu(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G,
                     const at::Tensor& G_mean, double lam, double gamma) {
  check_motef_track_args(g, M, V, G, G_mean, lam, gamma, "motef_track_");
  const at::Tensor gc = g.contiguous();
  const float lam_f = static_cast<float>(lam);
  const float gamma_f = static_cast<float>(gamma);
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "motef_track_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* mp = M.mutable_data_ptr<scalar_t>();
    scalar_t* vp = V.mutable_data_ptr<scalar_t>();
    const scalar_t* tp = G.const_data_ptr<scalar_t>();
    const scalar_t* sp = G_mean.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < g.numel(); ++i) {
      const float step = lam_f * (static_cast<float>(gp[i]) - static_cast<float>(mp[i]));
      const float gossip = gamma_f * (static_cast<float>(sp[i]) - static_cast<float>(tp[i]));
      mp[i] = static_cast<scalar_t>(static_cast<float>(mp[i]) + step);
      vp[i] = static_cast<scalar_t>((static_cast<float>(vp[i]) + step) + gossip);
    }
  });
}

at::Tensor lazy_trigger_cpu(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                            double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "lazy_trigger");
  const at::Tensor gc = g.contiguous();
  double to_estimate = 0.0;   // ||g - h_local||^2
  double to_previous = 0.0;   // ||g - y||^2
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "lazy_trigger_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* hp = h_local.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double a = static_cast<float>(gp[i]) - static_cast<float>(hp[i]);
      const double b = static_cast<float>(gp[i]) - static_cast<float>(yp[i]);
      to_estimate += a * a;
      to_previous += b * b;
    }
  });
  return at::scalar_tensor(to_estimate > zeta * to_previous, g.options().dtype(at::kBool));
}

at::Tensor adacgd_choose_cpu(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                             at::IntArrayRef ks, double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "adacgd_choose");
  check_ladder(ks, g.numel(), "adacgd_choose");
  const at::Tensor gc = g.contiguous();
  const int64_t n = g.numel();
  std::vector<double> squares(n);
  double to_previous = 0.0;  // ||g - y||^2
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "adacgd_choose_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* hp = h_local.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const double d = static_cast<float>(gp[i]) - static_cast<float>(hp[i]);
      const double b = static_cast<float>(gp[i]) - static_cast<float>(yp[i]);
      squares[i] = d * d;
      to_previous += b * b;
    }
  });
  std::sort(squares.begin(), squares.end(), std::greater<double>());
  const double bound = zeta * to_previous;
  double total = 0.0;
  for (const double v : squares) total += v;
  int32_t choice = 0;
  if (total > bound) {
    choice = static_cast<int32_t>(ks.size());  // the finest rung when none is good enough
    double sent = 0.0;
    int64_t taken = 0;
    for (size_t j = 0; j < ks.size(); ++j) {
      for (; taken < ks[j]; ++taken) sent += squares[taken];
      if (total - sent <= bound) {
        choice = static_cast<int32_t>(j + 1);
        break;
      }
    }
  }
  return at::scalar_tensor(choice, g.options().dtype(at::kInt));
}

TORCH_LIBRARY_IMPL(efcomm, CPU, m) {
  m.impl("topk", &topk_cpu);
  m.impl("topk_encode", &topk_encode_cpu);
  m.impl("ef_topk_encode_", &ef_topk_encode_cpu);
  m.impl("ef21_topk_encode_", &ef21_topk_encode_cpu);
  m.impl("ef21_sgdm_topk_encode_", &ef21_sgdm_topk_encode_cpu);
  m.impl("econtrol_topk_encode_", &econtrol_topk_encode_cpu);
  m.impl("topk_decode_add_", &topk_decode_add_cpu);
  m.impl("clip21_encode_", &clip21_encode_cpu);
  m.impl("dense_decode_add_", &dense_decode_add_cpu);
  m.impl("lag_encode_", &lag_encode_cpu);
  m.impl("motef_track_", &motef_track_cpu);
  m.impl("lazy_trigger", &lazy_trigger_cpu);
  m.impl("adacgd_choose", &adacgd_choose_cpu);
}

}  // namespace efcomm
