// CUDA implementation of the method ops (the contract: csrc/ops.h): MoTEF's step in
// kernels/momentum.cu; the lazy trigger and AdaCGD's choice as ATen reductions, summed in the
// GPU's order (at a boundary a decision can differ from the CPU's; every rank of a run uses one
// device).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/momentum.cuh"

namespace efcomm {

void motef_track_cuda(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G, const at::Tensor& G_mean,
                      double lam, double gamma) {
  check_motef_track_args(g, M, V, G, G_mean, lam, gamma, "motef_track_");
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gc = g.contiguous();
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "motef_track_cuda", [&] {
    kernels::motef_track(kernel_ptr(gc.const_data_ptr<scalar_t>()), kernel_ptr(M.mutable_data_ptr<scalar_t>()),
                         kernel_ptr(V.mutable_data_ptr<scalar_t>()), kernel_ptr(G.const_data_ptr<scalar_t>()),
                         kernel_ptr(G_mean.const_data_ptr<scalar_t>()), g.numel(), static_cast<float>(lam),
                         static_cast<float>(gamma), at::cuda::getCurrentCUDAStream());
  });
}

at::Tensor lazy_trigger_cuda(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "lazy_trigger");
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gf = g.contiguous().view({-1}).to(at::kFloat);
  const at::Tensor to_estimate = at::sub(gf, h_local.view({-1}).to(at::kFloat)).to(at::kDouble).square().sum();
  const at::Tensor to_previous = at::sub(gf, y.view({-1}).to(at::kFloat)).to(at::kDouble).square().sum();
  return at::gt(to_estimate, to_previous.mul(zeta));
}

at::Tensor adacgd_choose_cuda(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y, at::IntArrayRef ks,
                              double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "adacgd_choose");
  check_ladder(ks, g.numel(), "adacgd_choose");
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gf = g.contiguous().view({-1}).to(at::kFloat);
  const at::Tensor squares = at::sub(gf, h_local.view({-1}).to(at::kFloat)).to(at::kDouble).square();
  const at::Tensor bound = at::sub(gf, y.view({-1}).to(at::kFloat)).to(at::kDouble).square().sum().mul(zeta);
  const at::Tensor sent = std::get<0>(at::sort(squares, /*stable=*/false, /*dim=*/0, /*descending=*/true)).cumsum(0);
  const at::Tensor total = squares.sum();
  const at::Tensor rungs =
      at::tensor(std::vector<int64_t>(ks.begin(), ks.end()), sent.options().dtype(at::kLong)).sub(1);
  const at::Tensor good = at::le(total - sent.index_select(0, rungs), bound);  // per rung
  // First good rung (1-based), else the last rung; 0 when nothing needs sending.
  const int64_t m = static_cast<int64_t>(ks.size());
  const at::Tensor positions = at::arange(1, m + 1, good.options().dtype(at::kInt));
  const at::Tensor first_good = at::where(good, positions, at::full({m}, m, positions.options())).min();
  return at::where(at::le(total, bound), at::zeros_like(first_good), first_good);
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("motef_track_", &motef_track_cuda);
  m.impl("lazy_trigger", &lazy_trigger_cuda);
  m.impl("adacgd_choose", &adacgd_choose_cuda);
}

}  // namespace efcomm
