// CUDA implementation of the Top-k family (the contract: csrc/ops.h): argument checks and device
// guard here; selection by the two-pass radix select of kernels/topk_select.cu (the default), or
// with EFCOMM_TOPK_SELECT=radix2 the sync-free select of kernels/topk_radix.cu (no host read; the
// default once a GPU run has verified it), or with EFCOMM_TOPK_SELECT=sort a stable ATen sort (the
// first path, kept to compare against); the message, the state update and the deterministic
// decode in kernels/sparse_message.cu.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "csrc/checks.h"
#include "csrc/cuda_types.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "kernels/compact_message.cuh"
#include "kernels/sparse_message.cuh"
#include "kernels/topk_radix.cuh"
#include "kernels/topk_select.cuh"

namespace efcomm {
namespace {

// Indices (int64, ascending) of the k entries of the 1-D contiguous x that rank first:
// larger magnitude, NaN above +inf, ties to the lower index (a stable descending sort
// keeps equal magnitudes in index order).
at::Tensor select_topk_by_sort(const at::Tensor& x, int64_t k) {
  const at::Tensor order = std::get<1>(at::sort(x.abs(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, k)));
}

enum class Select { kRadix, kRadix2, kSort };

Select select_from_env() {
  const char* value = std::getenv("EFCOMM_TOPK_SELECT");
  if (value == nullptr || *value == '\0' || std::strcmp(value, "radix") == 0) return Select::kRadix;
  if (std::strcmp(value, "radix2") == 0) return Select::kRadix2;
  TORCH_CHECK(std::strcmp(value, "sort") == 0, "EFCOMM_TOPK_SELECT (", value, ") must be radix, radix2 or sort");
  return Select::kSort;
}

// The sync-free select (kernels/topk_radix.cu): the workspace depends on (n, k) alone, and no
// count comes back to the host, with or without the hint.
at::Tensor select_topk_radix2(const at::Tensor& a, const at::Tensor* b, int64_t k, float* hint) {
  const int64_t n = a.numel();
  at::Tensor indices = at::empty({k}, a.options().dtype(at::kInt));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "select_topk_radix2", [&] {
    using T = typename KernelType<scalar_t>::type;
    const kernels::TopkSource<T> src{kernel_ptr(a.const_data_ptr<scalar_t>()),
                                     b ? kernel_ptr(b->const_data_ptr<scalar_t>()) : nullptr};
    const size_t bytes = kernels::topk_radix_workspace<T>(n, k);
    at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
    kernels::topk_radix_select(src, n, k, hint, workspace.mutable_data_ptr(), bytes,
                               indices.mutable_data_ptr<int32_t>(), at::cuda::getCurrentCUDAStream());
  });
  return indices;
}

// Indices (int32, ascending) of the k entries that rank first among a (b null) or among the
// rounded differences a - b, without materialising them: kernels/topk_select.cu. With hint
// (threshold Top-k, kernels/topk_hint.h): one pass gathers the entries that reach hint[0]; when
// they hold the Top-k (k <= count <= cap) the histogram pass is skipped.
at::Tensor select_topk_radix(const at::Tensor& a, const at::Tensor* b, int64_t k, float* hint) {
  const int64_t n = a.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor indices = at::empty({k}, a.options().dtype(at::kInt));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "select_topk_radix", [&] {
    using T = typename KernelType<scalar_t>::type;
    const kernels::TopkSource<T> src{kernel_ptr(a.const_data_ptr<scalar_t>()),
                                     b ? kernel_ptr(b->const_data_ptr<scalar_t>()) : nullptr};
    auto finish = [&](const int64_t* info, int64_t candidates, const int64_t* given, const int64_t* given_count,
                      bool fell_back) {
      const size_t bytes = kernels::topk_finish_workspace<T>(n, candidates);
      at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
      kernels::topk_finish(src, n, k, info, candidates, workspace.mutable_data_ptr(), bytes,
                           indices.mutable_data_ptr<int32_t>(), stream, given, given_count, hint, fell_back);
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
        finish(nullptr, found, candidates.const_data_ptr<int64_t>(), count, false);
        return;
      }
    }
    at::Tensor hist = at::empty({kernels::kTopkBins}, a.options().dtype(at::kInt));
    at::Tensor info = at::empty({3}, a.options().dtype(at::kLong));
    kernels::topk_histogram(src, n, k, reinterpret_cast<uint32_t*>(hist.mutable_data_ptr<int32_t>()),
                            info.mutable_data_ptr<int64_t>(), stream);
    const at::Tensor host = info.cpu();  // the candidate count sizes the workspace
    finish(info.const_data_ptr<int64_t>(), host[1].item<int64_t>() + host[2].item<int64_t>(), nullptr, nullptr, true);
  });
  return indices;
}

// Top-k of the 1-D contiguous a, or of T(a - b): int32 indices, ascending. The sort path
// neither reads nor updates the hint.
at::Tensor select_topk(const at::Tensor& a, const at::Tensor* b, int64_t k,
                       const std::optional<at::Tensor>& threshold) {
  float* hint = threshold.has_value() ? threshold->mutable_data_ptr<float>() : nullptr;
  switch (select_from_env()) {
    case Select::kSort:
      return select_topk_by_sort(b ? at::sub(a, *b) : a, k).to(at::kInt);
    case Select::kRadix2:
      return select_topk_radix2(a, b, k, hint);
    case Select::kRadix:
      break;
  }
  return select_topk_radix(a, b, k, hint);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& x, int64_t k,
                                             const std::optional<at::Tensor>& threshold) {
  check_topk_args(x, k, threshold);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor flat = x.contiguous().view({-1});
  const at::Tensor selected = select_topk(flat, nullptr, k, threshold);
  at::Tensor values = at::empty({k}, x.options());
  EFCOMM_DISPATCH_FLOAT_TYPES(x.scalar_type(), "topk_cuda", [&] {
    kernels::gather_message(kernel_ptr(flat.const_data_ptr<scalar_t>()), kernel_ptr(static_cast<scalar_t*>(nullptr)),
                            selected.const_data_ptr<int32_t>(), k, own_message_rule(1.0),
                            kernel_ptr(values.mutable_data_ptr<scalar_t>()), nullptr, at::cuda::getCurrentCUDAStream());
  });
  return {values, selected};
}

namespace {

// Calls fn(T*, V*) (null pointers naming the types) with the kernel storage types of the
// tensor's dtype and of the message values' dtype (csrc/message_layout.h: V is T, or bfloat16 /
// float16 for float32).
template <typename Fn>
void with_value_types(c10::ScalarType dtype, c10::ScalarType value_dtype, Fn&& fn) {
  EFCOMM_DISPATCH_FLOAT_TYPES(dtype, "topk_cuda", [&] {
    using T = typename KernelType<scalar_t>::type;
    EFCOMM_DISPATCH_FLOAT_TYPES(value_dtype, "topk_cuda", [&] {
      using V = typename KernelType<scalar_t>::type;
      fn(static_cast<T*>(nullptr), static_cast<V*>(nullptr));
    });
  });
}

template <typename P>
using Pointee = std::remove_pointer_t<P>;

bool plain(const SparseFormat& format, c10::ScalarType dtype) {
  return !format.compact && format.value_dtype == dtype;
}

}  // namespace

at::Tensor topk_encode_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, double scale,
                            const std::optional<at::Tensor>& threshold, std::optional<c10::ScalarType> value_dtype,
                            int64_t index_bits) {
  const SparseFormat format = check_topk_encode_args(a, b, k, scale, threshold, value_dtype, index_bits);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::Tensor flat = a.contiguous().view({-1});
  const std::optional<at::Tensor> state = b.has_value() ? std::optional<at::Tensor>(b->view({-1})) : std::nullopt;
  const at::Tensor selected = select_topk(flat, state ? &*state : nullptr, k, threshold);
  at::Tensor message = at::zeros({sparse_message_nbytes(a.numel(), k, format)}, a.options().dtype(at::kByte));
  uint8_t* bytes = message.mutable_data_ptr<uint8_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (plain(format, a.scalar_type())) {
    const wire::SparseLayout layout = sparse_layout_of(k, a.scalar_type());
    EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "topk_encode_cuda", [&] {
      kernels::gather_message(kernel_ptr(flat.const_data_ptr<scalar_t>()),
                              state ? kernel_ptr(state->mutable_data_ptr<scalar_t>()) : nullptr,
                              selected.const_data_ptr<int32_t>(), k, own_message_rule(scale),
                              kernel_ptr(reinterpret_cast<scalar_t*>(bytes)),
                              reinterpret_cast<int32_t*>(bytes + layout.indices_offset), stream);
    });
    return message;
  }
  with_value_types(a.scalar_type(), format.value_dtype, [&](auto* t, auto* v) {
    using T = Pointee<decltype(t)>;
    using V = Pointee<decltype(v)>;
    kernels::pack_sparse<T, V>(
        static_cast<const T*>(flat.const_data_ptr()), state ? static_cast<T*>(state->mutable_data_ptr()) : nullptr,
        selected.const_data_ptr<int32_t>(), a.numel(), k, own_message_rule(scale), format.compact, bytes, stream);
  });
  return message;
}

void topk_decode_add_cuda(at::Tensor& h, const at::Tensor& gathered, int64_t k, double scale,
                          const std::optional<at::Tensor>& weights, std::optional<c10::ScalarType> value_dtype,
                          int64_t index_bits) {
  const SparseFormat format = check_topk_decode_args(h, gathered, k, scale, weights, value_dtype, index_bits);
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t rows = gathered.size(0);
  const int64_t n = h.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const wire::SparseLayout layout = sparse_layout_of(k, h.scalar_type());
  at::Tensor messages = gathered;
  if (!plain(format, h.scalar_type())) {  // rewritten in the sparse layout of h's dtype, then decoded
    messages = at::empty({rows, layout.nbytes}, gathered.options());
    const int64_t chunks = compact_layout_of(n, k, format.value_dtype).chunks;
    at::Tensor starts = at::empty({rows * (chunks + 1)}, h.options().dtype(at::kLong));
    with_value_types(h.scalar_type(), format.value_dtype, [&](auto* t, auto* v) {
      using T = Pointee<decltype(t)>;
      using V = Pointee<decltype(v)>;
      kernels::expand_sparse<T, V>(gathered.const_data_ptr<uint8_t>(), rows, gathered.size(1), n, k, format.compact,
                                   messages.mutable_data_ptr<uint8_t>(), layout.nbytes, layout.indices_offset,
                                   starts.mutable_data_ptr<int64_t>(), stream);
    });
  }
  at::Tensor workspace = at::empty({kernels::decode_workspace_ints(rows, n)}, h.options().dtype(at::kInt));
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "topk_decode_add_cuda", [&] {
    kernels::sparse_decode_add(kernel_ptr(h.mutable_data_ptr<scalar_t>()), n, messages.const_data_ptr<uint8_t>(), rows,
                               layout.nbytes, layout.indices_offset, k, rule, workspace.mutable_data_ptr<int32_t>(),
                               stream);
  });
}

TORCH_LIBRARY_IMPL(efcomm, CUDA, m) {
  m.impl("topk", &topk_cuda);
  m.impl("topk_encode_", &topk_encode_cuda);
  m.impl("topk_decode_add_", &topk_decode_add_cuda);
}

}  // namespace efcomm
