// CUDA implementations: argument checks and device guard here; Top-k selection by the
// two-pass radix select of kernels/topk_select.cu (or, with EFCOMM_TOPK_SELECT=sort, a stable
// ATen sort: the previous path, kept to compare against); message packing and the
// deterministic decode in kernels/.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/message_layout.h"
#include "csrc/ops.h"
#include "kernels/sparse_message.cuh"
#include "kernels/topk_select.cuh"

#include <cstdlib>
#include <cstring>

namespace efcomm {
namespace {

// Indices (int64, ascending) of the k entries of the 1-D contiguous x that rank first:
// larger magnitude, NaN above +inf, ties to the lower index (a stable descending sort
// keeps equal magnitudes in index order).
at::Tensor select_topk_by_sort(const at::Tensor& x, int64_t k) {
  const at::Tensor order = std::get<1>(at::sort(x.abs(), /*stable=*/true, /*dim=*/0,
                                                /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, k)));
}

bool select_by_sort() {
  const char* value = std::getenv("EFCOMM_TOPK_SELECT");
  return value != nullptr && std::strcmp(value, "sort") == 0;
}

// Indices (int32, ascending) of the k entries that rank first among a (b null) or among
// the rounded differences a - b, without materialising them: kernels/topk_select.cu. With
// hint (threshold Top-k, kernels/topk_hint.h): one pass gathers the entries that reach
// hint[0]; when they hold the Top-k (k <= count <= cap) the histogram pass is skipped.
at::Tensor select_topk_radix(const at::Tensor& a, const at::Tensor* b, int64_t k, float* hint = nullptr) {
  const int64_t n = a.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor indices = at::empty({k}, a.options().dtype(at::kInt));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "select_topk_radix", [&] {
    using T = typename KernelType<scalar_t>::type;
    const kernels::TopkSource<T> src{kernel_ptr(a.const_data_ptr<scalar_t>()),
                                     b ? kernel_ptr(b->const_data_ptr<scalar_t>()) : nullptr};
    auto finish = [&](const int64_t* info, int64_t candidates, const int64_t* given, bool fell_back) {
      const size_t bytes = kernels::topk_finish_workspace<T>(n, candidates);
      at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
      kernels::topk_finish(src, n, k, info, candidates, workspace.mutable_data_ptr(), bytes,
                           indices.mutable_data_ptr<int32_t>(), stream, given, hint, fell_back);
    };
    if (hint != nullptr) {
      const int64_t cap = std::min(n, kernels::kTopkHintCapFactor * k);
      const size_t temp = kernels::topk_hinted_workspace<T>(n, cap);
      at::Tensor candidates = at::empty({cap + 1}, a.options().dtype(at::kLong));  // + the count
      at::Tensor workspace = at::empty({static_cast<int64_t>(temp)}, a.options().dtype(at::kByte));
      int64_t* count = candidates.mutable_data_ptr<int64_t>() + cap;
      kernels::topk_hinted_candidates(src, n, hint, cap, workspace.mutable_data_ptr(), temp,
                                      candidates.mutable_data_ptr<int64_t>(), count, stream);
      const int64_t found = candidates.narrow(0, cap, 1).cpu().item<int64_t>();  // one 8-byte read
      if (k <= found && found <= cap) {
        finish(nullptr, found, candidates.const_data_ptr<int64_t>(), false);
        return;
      }
    }
    at::Tensor hist = at::empty({kernels::kTopkBins}, a.options().dtype(at::kInt));
    at::Tensor info = at::empty({3}, a.options().dtype(at::kLong));
    kernels::topk_histogram(src, n, k, reinterpret_cast<uint32_t*>(hist.mutable_data_ptr<int32_t>()),
                            info.mutable_data_ptr<int64_t>(), stream);
    const at::Tensor host = info.cpu();  // the candidate count sizes the workspace
    finish(info.const_data_ptr<int64_t>(), host[1].item<int64_t>() + host[2].item<int64_t>(), nullptr, true);
  });
  return indices;
}

float* hint_ptr(const std::optional<at::Tensor>& threshold) {
  return threshold.has_value() ? threshold->mutable_data_ptr<float>() : nullptr;
}

// Top-k of the 1-D contiguous x: int32 indices, ascending. The sort path ignores the hint
// (it neither reads nor updates it).
at::Tensor select_topk(const at::Tensor& x, int64_t k, float* hint = nullptr) {
  if (select_by_sort()) return select_topk_by_sort(x, k).to(at::kInt);
  return select_topk_radix(x, nullptr, k, hint);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& x, int64_t k,
                                              const std::optional<at::Tensor>& threshold) {
  check_topk_args(x, k, "topk");
  check_threshold_hint(threshold, x, "topk");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor flat = x.contiguous().view({-1});
  const at::Tensor selected = select_topk(flat, k, hint_ptr(threshold));
  return {flat.index_select(0, selected), selected};
}

namespace {

// Selects Top-k of the 1-D contiguous src, writes its message and, at the selected
// indices, adds the sent values to add_to and subtracts them from subtract_from (either
// may be null; see kernels/sparse_message.cuh).
at::Tensor select_and_pack(const at::Tensor& src, int64_t k, at::Tensor* add_to,
                           at::Tensor* subtract_from, float* hint) {
  const at::Tensor selected = select_topk(src, k, hint);
  const TopkMessageLayout layout = topk_message_layout(k, src.scalar_type());
  at::Tensor message = at::zeros({layout.nbytes}, src.options().dtype(at::kByte));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  EFCOMM_DISPATCH_FLOAT_TYPES(src.scalar_type(), "select_and_pack_cuda", [&] {
    auto state_ptr = [](at::Tensor* t) {
      return t ? kernel_ptr(t->mutable_data_ptr<scalar_t>()) : nullptr;
    };
    uint8_t* bytes = message.mutable_data_ptr<uint8_t>();
    kernels::pack_selected(kernel_ptr(src.const_data_ptr<scalar_t>()),
                           selected.const_data_ptr<int32_t>(), k, state_ptr(add_to),
                           state_ptr(subtract_from), kernel_ptr(reinterpret_cast<scalar_t*>(bytes)),
                           reinterpret_cast<int32_t*>(bytes + layout.indices_offset), stream);
  });
  return message;
}

// EF21's step on the 1-D contiguous a (g, or EF21-SGDM's v) and h: c = TopK(T(a - h)),
// h += c, the message of c; the differences are never materialised.
at::Tensor select_difference_and_pack(const at::Tensor& a, at::Tensor& h, int64_t k, float* hint) {
  if (select_by_sort()) return select_and_pack(at::sub(a, h), k, &h, nullptr, hint);
  const at::Tensor selected = select_topk_radix(a, &h, k, hint);
  const TopkMessageLayout layout = topk_message_layout(k, a.scalar_type());
  at::Tensor message = at::zeros({layout.nbytes}, a.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "select_difference_and_pack_cuda", [&] {
    uint8_t* bytes = message.mutable_data_ptr<uint8_t>();
    kernels::pack_difference(kernel_ptr(a.const_data_ptr<scalar_t>()), kernel_ptr(h.mutable_data_ptr<scalar_t>()),
                             selected.const_data_ptr<int32_t>(), k, kernel_ptr(reinterpret_cast<scalar_t*>(bytes)),
                             reinterpret_cast<int32_t*>(bytes + layout.indices_offset),
                             at::cuda::getCurrentCUDAStream());
  });
  return message;
}

}  // namespace

at::Tensor topk_encode_cuda(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& threshold) {
  check_topk_args(x, k, "topk_encode");
  check_threshold_hint(threshold, x, "topk_encode");
  const c10::cuda::CUDAGuard guard(x.device());
  return select_and_pack(x.contiguous().view({-1}), k, nullptr, nullptr, hint_ptr(threshold));
}

at::Tensor ef_topk_encode_cuda(const at::Tensor& g, at::Tensor& e, int64_t k,
                               const std::optional<at::Tensor>& threshold) {
  check_stateful_encode_args(g, e, "e", k, "ef_topk_encode_");
  check_threshold_hint(threshold, g, "ef_topk_encode_");
  const c10::cuda::CUDAGuard guard(g.device());
  at::Tensor flat = e.view({-1});
  flat.add_(g.contiguous().view({-1}));  // e becomes p = g + e
  return select_and_pack(flat, k, nullptr, &flat, hint_ptr(threshold));
}

at::Tensor ef21_topk_encode_cuda(const at::Tensor& g, at::Tensor& h_local, int64_t k,
                                 const std::optional<at::Tensor>& threshold) {
  check_stateful_encode_args(g, h_local, "h_local", k, "ef21_topk_encode_");
  check_threshold_hint(threshold, g, "ef21_topk_encode_");
  const c10::cuda::CUDAGuard guard(g.device());
  at::Tensor flat = h_local.view({-1});
  return select_difference_and_pack(g.contiguous().view({-1}), flat, k, hint_ptr(threshold));
}

at::Tensor ef21_sgdm_topk_encode_cuda(const at::Tensor& g, at::Tensor& v, at::Tensor& h_local,
                                      int64_t k, double eta, const std::optional<at::Tensor>& threshold) {
  check_two_state_encode_args(g, v, "v", h_local, k, eta, "ef21_sgdm_topk_encode_");
  check_threshold_hint(threshold, g, "ef21_sgdm_topk_encode_");
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gc = g.contiguous();
  EFCOMM_DISPATCH_FLOAT_TYPES(g.scalar_type(), "ef21_sgdm_momentum_cuda", [&] {
    kernels::momentum_update(kernel_ptr(v.mutable_data_ptr<scalar_t>()),
                             kernel_ptr(gc.const_data_ptr<scalar_t>()), g.numel(),
                             static_cast<float>(1.0 - eta), static_cast<float>(eta),
                             at::cuda::getCurrentCUDAStream());
  });
  at::Tensor flat = h_local.view({-1});
  return select_difference_and_pack(v.view({-1}), flat, k, hint_ptr(threshold));
}

at::Tensor econtrol_topk_encode_cuda(const at::Tensor& g, at::Tensor& e, at::Tensor& h_local,
                                     int64_t k, double eta, const std::optional<at::Tensor>& threshold) {
  check_two_state_encode_args(g, e, "e", h_local, k, eta, "econtrol_topk_encode_");
  check_threshold_hint(threshold, g, "econtrol_topk_encode_");
  const c10::cuda::CUDAGuard guard(g.device());
  at::Tensor e_flat = e.view({-1});
  at::Tensor h_flat = h_local.view({-1});
  const at::Tensor r = at::sub(g.contiguous().view({-1}), h_flat);
  const at::Tensor p = at::add(r, at::mul(e_flat, eta));  // each op rounds to g's dtype
  e_flat.add_(r);
  return select_and_pack(p, k, &h_flat, &e_flat, hint_ptr(threshold));
}

void topk_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, int64_t k,
                          std::optional<at::ArrayRef<double>> weights) {
  const TopkMessageLayout layout =
      check_topk_decode_args(h, gathered, k, weights, "topk_decode_add_");
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t world = gathered.size(0);
  const int64_t n = h.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor workspace = at::empty({kernels::decode_workspace_ints(world, n)}, h.options().dtype(at::kInt));
  std::optional<at::Tensor> device_weights;
  if (weights.has_value()) {
    const std::vector<float> w(weights->begin(), weights->end());
    device_weights = at::tensor(w, at::kFloat).to(h.device());
  }
  const float scale = weights.has_value() ? 1.0f : 1.0f / static_cast<float>(world);
  const at::Tensor rows = gathered.contiguous();
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "topk_decode_add_cuda", [&] {
    kernels::sparse_decode_add(kernel_ptr(h.mutable_data_ptr<scalar_t>()), n, rows.const_data_ptr<uint8_t>(),
                               world, layout.nbytes, layout.indices_offset, k,
                               device_weights ? device_weights->const_data_ptr<float>() : nullptr, scale,
                               workspace.mutable_data_ptr<int32_t>(), stream);
  });
}

at::Tensor clip21_encode_cuda(const at::Tensor& g, at::Tensor& h_local, double tau) {
  check_clip21_args(g, h_local, tau, "clip21_encode_");
  const c10::cuda::CUDAGuard guard(g.device());
  const int64_t n = g.numel();
  at::Tensor flat = h_local.view({-1});
  const at::Tensor d = at::sub(g.contiguous().view({-1}), flat);
  // The norm is reduced in double, in the GPU's order: the clip factor can differ from the
  // CPU reference in its last bits (c agrees to a relative 1e-6; tested with a tolerance).
  const at::Tensor norm = at::linalg_vector_norm(d, 2, std::nullopt, false, at::kDouble);
  const at::Tensor factor = at::clamp_max(at::reciprocal(norm).mul_(tau), 1.0).to(at::kFloat);
  const at::Tensor c = at::mul(d.to(at::kFloat), factor).to(g.scalar_type());
  flat.add_(c);
  at::Tensor message = at::zeros({dense_message_nbytes(n, g.scalar_type())}, g.options().dtype(at::kByte));
  message.narrow(0, 0, n * g.element_size()).view(g.scalar_type()).copy_(c);
  return message;
}

void dense_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered,
                           std::optional<int64_t> world_size) {
  check_dense_decode_args(h, gathered, world_size, "dense_decode_add_");
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t n = h.numel();
  at::Tensor acc = at::zeros({n}, h.options().dtype(at::kFloat));
  for (int64_t j = 0; j < gathered.size(0); ++j) {  // rank order, one elementwise add each
    acc.add_(gathered[j].narrow(0, 0, n * h.element_size()).view(h.scalar_type()).to(at::kFloat));
  }
  const float inv_world = 1.0f / static_cast<float>(world_size.value_or(gathered.size(0)));
  acc.mul_(static_cast<double>(inv_world));  // exactly the float32 inv_world
  h.view({-1}).copy_(at::add(h.view({-1}).to(at::kFloat), acc));
}

void motef_track_cuda(const at::Tensor& g, at::Tensor& M, at::Tensor& V, const at::Tensor& G,
                      const at::Tensor& G_mean, double lam, double gamma) {
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

at::Tensor lag_encode_cuda(const at::Tensor& g, at::Tensor& h_local) {
  check_stateful_encode_args(g, h_local, "h_local", 1, "lag_encode_");
  const c10::cuda::CUDAGuard guard(g.device());
  at::Tensor flat = h_local.view({-1});
  const at::Tensor d = at::sub(g.contiguous().view({-1}), flat);
  flat.add_(d);
  at::Tensor message =
      at::zeros({dense_message_nbytes(g.numel(), g.scalar_type())}, g.options().dtype(at::kByte));
  message.narrow(0, 0, g.numel() * g.element_size()).view(g.scalar_type()).copy_(d);
  return message;
}

at::Tensor lazy_trigger_cuda(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                             double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "lazy_trigger");
  const c10::cuda::CUDAGuard guard(g.device());
  // Differences in float32, squares summed in double in the GPU's order: at the boundary
  // the decision can differ from the CPU reference's; every rank of a run uses one device.
  const at::Tensor gf = g.contiguous().view({-1}).to(at::kFloat);
  const at::Tensor to_estimate = at::sub(gf, h_local.view({-1}).to(at::kFloat)).to(at::kDouble).square().sum();
  const at::Tensor to_previous = at::sub(gf, y.view({-1}).to(at::kFloat)).to(at::kDouble).square().sum();
  return at::gt(to_estimate, to_previous.mul(zeta));
}

at::Tensor adacgd_choose_cuda(const at::Tensor& g, const at::Tensor& h_local, const at::Tensor& y,
                              at::IntArrayRef ks, double zeta) {
  check_lazy_trigger_args(g, h_local, y, zeta, "adacgd_choose");
  check_ladder(ks, g.numel(), "adacgd_choose");
  const c10::cuda::CUDAGuard guard(g.device());
  // The same quantities as the CPU reference, summed in the GPU's order: at a boundary the
  // choice can differ from the CPU's; every rank of a run uses one device.
  const at::Tensor gf = g.contiguous().view({-1}).to(at::kFloat);
  const at::Tensor squares = at::sub(gf, h_local.view({-1}).to(at::kFloat)).to(at::kDouble).square();
  const at::Tensor bound =
      at::sub(gf, y.view({-1}).to(at::kFloat)).to(at::kDouble).square().sum().mul(zeta);
  const at::Tensor sent = std::get<0>(at::sort(squares, /*stable=*/false, /*dim=*/0, /*descending=*/true)).cumsum(0);
  const at::Tensor total = squares.sum();
  const at::Tensor rungs = at::tensor(std::vector<int64_t>(ks.begin(), ks.end()), sent.options().dtype(at::kLong)).sub(1);
  const at::Tensor good = at::le(total - sent.index_select(0, rungs), bound);  // per rung
  // First good rung (1-based), else the last rung; 0 when nothing needs sending.
  const int64_t m = static_cast<int64_t>(ks.size());
  const at::Tensor positions = at::arange(1, m + 1, good.options().dtype(at::kInt));
  const at::Tensor first_good = at::where(good, positions, at::full({m}, m, positions.options())).min();
  return at::where(at::le(total, bound), at::zeros_like(first_good), first_good);
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("topk", &topk_cuda);
  m.impl("topk_encode", &topk_encode_cuda);
  m.impl("ef_topk_encode_", &ef_topk_encode_cuda);
  m.impl("ef21_topk_encode_", &ef21_topk_encode_cuda);
  m.impl("ef21_sgdm_topk_encode_", &ef21_sgdm_topk_encode_cuda);
  m.impl("econtrol_topk_encode_", &econtrol_topk_encode_cuda);
  m.impl("topk_decode_add_", &topk_decode_add_cuda);
  m.impl("clip21_encode_", &clip21_encode_cuda);
  m.impl("dense_decode_add_", &dense_decode_add_cuda);
  m.impl("lag_encode_", &lag_encode_cuda);
  m.impl("motef_track_", &motef_track_cuda);
  m.impl("lazy_trigger", &lazy_trigger_cuda);
  m.impl("adacgd_choose", &adacgd_choose_cuda);
}

}  // namespace efcomm
