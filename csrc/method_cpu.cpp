// CPU reference of the method ops (the contract: csrc/ops.h): MoTEF's tracking step, the 3PC
// lazy trigger and AdaCGD's choice. Plain loops; csrc/method_cuda.cpp is checked against them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "csrc/checks.h"
#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"

namespace efcomm {

void motef_track_cpu(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G, const at::Tensor& G_mean,
                     double lam, double gamma) {
  check_motef_track_args(g, M, V, G, G_mean, lam, gamma, "motef_track_");
  const at::Tensor gc = g.contiguous();
  const auto lam_f = static_cast<float>(lam);
  const auto gamma_f = static_cast<float>(gamma);
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "motef_track_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* mp = M.mutable_data_ptr<scalar_t>();
    scalar_t* vp = V.mutable_data_ptr<scalar_t>();
    const scalar_t* tp = G.const_data_ptr<scalar_t>();
    const scalar_t* sp = G_mean.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < g.numel(); ++i) {
      const float step = lam_f * (load(gp[i]) - load(mp[i]));
      const float gossip = gamma_f * (load(sp[i]) - load(tp[i]));
      mp[i] = store<scalar_t>(load(mp[i]) + step);
      vp[i] = store<scalar_t>((load(vp[i]) + step) + gossip);
    }
  });
}

at::Tensor lazy_trigger_cpu(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "lazy_trigger");
  const at::Tensor gc = g.contiguous();
  double to_estimate = 0.0;  // ||g - h_local||^2
  double to_previous = 0.0;  // ||g - y||^2
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "lazy_trigger_cpu", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* hp = h_local.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double a = load(gp[i]) - load(hp[i]);
      const double b = load(gp[i]) - load(yp[i]);
      to_estimate += a * a;
      to_previous += b * b;
    }
  });
  return at::scalar_tensor(to_estimate > zeta * to_previous, g.options().dtype(at::kBool));
}

at::Tensor adacgd_choose_cpu(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, at::IntArrayRef ks,
                             double zeta) {
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
      const double d = load(gp[i]) - load(hp[i]);
      const double b = load(gp[i]) - load(yp[i]);
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
  m.impl("motef_track_", &motef_track_cpu);
  m.impl("lazy_trigger", &lazy_trigger_cpu);
  m.impl("adacgd_choose", &adacgd_choose_cpu);
}

}  // namespace efcomm
