// CPU reference of the Top-k family (the contract: csrc/ops.h): plain loops, written to be
// read. The CUDA implementation (csrc/topk_cuda.cpp) is checked against it, bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "csrc/checks.h"
#include "csrc/cpu_storage.h"
#include "csrc/dispatch.h"
#include "csrc/ops.h"
#include "csrc/sparse_message.h"
#include "kernels/decode_rule.h"
#include "kernels/topk_hint.h"

namespace efcomm {
namespace {

// True when entry a of x ranks before entry b: larger magnitude first, NaN above everything,
// and among equal magnitudes the lower index first. This total order makes the Top-k set unique.
template <typename T>
struct RanksBefore {
  const T* x;
  bool operator()(int64_t a, int64_t b) const {
    const float ma = std::fabs(load(x[a]));
    const float mb = std::fabs(load(x[b]));
    const bool nan_a = std::isnan(ma);
    const bool nan_b = std::isnan(mb);
    if (nan_a != nan_b) return nan_a;
    if (!nan_a && ma != mb) return ma > mb;
    return a < b;
  }
};

// The threshold Top-k hint (kernels/topk_hint.h): whether the CUDA path finds the Top-k among
// the entries that reach hint[0] (else it falls back to two passes), and the next hint from the
// k-th largest magnitude. The selection does not depend on it.
template <typename T>
void update_hint(const T* x, int64_t n, int64_t k, float kth_magnitude, float* hint) {
  const float tau = hint[0];
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = load(x[i]);
    if (std::isnan(v) || std::fabs(v) >= tau) ++count;
  }
  const int64_t cap = std::min(n, kernels::kTopkHintCapFactor * k);
  const float next = kernels::kTopkHintMargin * kth_magnitude;
  hint[0] = std::isfinite(next) && next > 0.0f ? next : 0.0f;
  hint[1] = k <= count && count <= cap ? 0.0f : 1.0f;
}

// The k indices of x[0..n) that rank first, in ascending order; with hint, updates it.
template <typename T>
std::vector<int64_t> select_topk(const T* x, int64_t n, int64_t k, float* hint) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), RanksBefore<T>{x});
  if (hint != nullptr) update_hint(x, n, k, std::fabs(load(x[order[k - 1]])), hint);
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
  check_topk_args(x, k, threshold);
  const at::Tensor xc = x.contiguous();
  at::Tensor values = at::empty({k}, x.options());
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kInt));
  EFCOMM_DISPATCH_FLOAT_TYPES(x.scalar_type(), "topk_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const std::vector<int64_t> selected = select_topk(xp, xc.numel(), k, hint_ptr(threshold));
    scalar_t* vp = values.mutable_data_ptr<scalar_t>();
    int32_t* ip = indices.mutable_data_ptr<int32_t>();
    for (int64_t t = 0; t < k; ++t) {
      vp[t] = store<scalar_t>(load(xp[selected[t]]));
      ip[t] = static_cast<int32_t>(selected[t]);
    }
  });
  return {values, indices};
}

namespace {

// Writes the message of the entries `selected` of d = T(a - b) (b given) or a: their values as
// V, then, by `layout`, nothing (the dense layout of k values), their int32 indices (sparse) or
// their 16-bit offsets with one count per chunk (compact; `selected` ascending); with b, b +=
// scale * the value as sent (the decode rule for one row).
enum class EntryLayout { kValues, kSparse, kCompact };

template <typename T, typename V>
void pack_entries(const T* a, T* b, const std::vector<int64_t>& selected, int64_t numel, const DecodeRule& own,
                  EntryLayout layout, uint8_t* bytes) {
  const auto k = static_cast<int64_t>(selected.size());
  V* values = reinterpret_cast<V*>(bytes);
  if (layout == EntryLayout::kCompact) {
    const wire::CompactLayout compact = wire::compact_layout(numel, k, sizeof(V));
    auto* counts = reinterpret_cast<uint32_t*>(bytes);
    auto* offsets = reinterpret_cast<uint16_t*>(bytes + compact.offsets_offset);
    values = reinterpret_cast<V*>(bytes + compact.values_offset);
    for (int64_t t = 0; t < k; ++t) {
      counts[selected[t] / wire::kCompactChunk] += 1;
      offsets[t] = static_cast<uint16_t>(selected[t] % wire::kCompactChunk);
    }
  } else if (layout == EntryLayout::kSparse) {
    auto* indices = reinterpret_cast<int32_t*>(bytes + wire::sparse_layout(k, sizeof(V)).indices_offset);
    for (int64_t t = 0; t < k; ++t) indices[t] = static_cast<int32_t>(selected[t]);
  }
  for (int64_t t = 0; t < k; ++t) {
    const int64_t i = selected[t];
    const T d = store<T>(b != nullptr ? load(a[i]) - load(b[i]) : load(a[i]));
    values[t] = store<V>(load(d));
    if (b != nullptr) b[i] = add_decoded(b[i], own.single(load(values[t])));
  }
}

// One row's entries as (index, value) in message order, read from either layout; the checks
// name the rank of a malformed message.
template <typename V>
std::vector<std::pair<int64_t, float>> read_row(const uint8_t* row, int64_t k, int64_t n, bool compact, int64_t j) {
  const char* op = "topk_decode_add_";
  std::vector<std::pair<int64_t, float>> entries(k);
  if (compact) {
    const wire::CompactLayout layout = wire::compact_layout(n, k, sizeof(V));
    const auto* counts = reinterpret_cast<const uint32_t*>(row);
    const auto* values = reinterpret_cast<const V*>(row + layout.values_offset);
    const auto* offsets = reinterpret_cast<const uint16_t*>(row + layout.offsets_offset);
    int64_t t = 0;
    for (int64_t c = 0; c < layout.chunks; ++c) {
      TORCH_CHECK(counts[c] <= static_cast<uint32_t>(k - t), op, ": message of rank ", j, " counts more than k (", k,
                  ") entries by chunk ", c);
      for (uint32_t e = 0; e < counts[c]; ++e, ++t)
        entries[t] = {c * wire::kCompactChunk + offsets[t], load(values[t])};
    }
    TORCH_CHECK(t == k, op, ": message of rank ", j, " counts ", t, " entries; k is ", k);
  } else {
    const wire::SparseLayout layout = wire::sparse_layout(k, sizeof(V));
    const auto* values = reinterpret_cast<const V*>(row);
    const auto* indices = reinterpret_cast<const int32_t*>(row + layout.indices_offset);
    for (int64_t t = 0; t < k; ++t) entries[t] = {indices[t], load(values[t])};
  }
  for (int64_t t = 0; t < k; ++t) {
    const int64_t i = entries[t].first;
    TORCH_CHECK(i >= 0 && i < n, op, ": message of rank ", j, " holds index ", i, " outside [0, ", n, ")");
    TORCH_CHECK(t == 0 || entries[t - 1].first < i, op, ": message of rank ", j,
                " holds indices out of ascending order (", entries[t > 0 ? t - 1 : 0].first, " then ", i,
                " at position ", t, ")");
  }
  return entries;
}

}  // namespace

at::Tensor gather_message_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b,
                              const std::vector<int64_t>& selected, double scale, bool with_indices) {
  const auto k = static_cast<int64_t>(selected.size());
  const int64_t nbytes =
      with_indices ? sparse_layout_of(k, a.scalar_type()).nbytes : dense_layout_of(k, a.scalar_type()).nbytes;
  at::Tensor message = at::zeros({nbytes}, a.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "gather_message_cpu", [&] {
    pack_entries<scalar_t, scalar_t>(a.const_data_ptr<scalar_t>(), b ? b->mutable_data_ptr<scalar_t>() : nullptr,
                                     selected, a.numel(), own_message_rule(scale),
                                     with_indices ? EntryLayout::kSparse : EntryLayout::kValues,
                                     message.mutable_data_ptr<uint8_t>());
  });
  return message;
}

at::Tensor topk_encode_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b, int64_t k, double scale,
                           const std::optional<at::Tensor>& threshold, std::optional<c10::ScalarType> value_dtype,
                           int64_t index_bits) {
  const SparseFormat format = check_topk_encode_args(a, b, k, scale, threshold, value_dtype, index_bits);
  const at::Tensor ac = a.contiguous();
  const int64_t n = a.numel();
  std::vector<int64_t> selected;
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "topk_encode_cpu", [&] {
    const scalar_t* ap = ac.const_data_ptr<scalar_t>();
    if (!b.has_value()) {
      selected = select_topk(ap, n, k, hint_ptr(threshold));
      return;
    }
    const scalar_t* bp = b->const_data_ptr<scalar_t>();
    std::vector<scalar_t> d(n);  // d = T(a - b)
    for (int64_t i = 0; i < n; ++i) d[i] = store<scalar_t>(load(ap[i]) - load(bp[i]));
    selected = select_topk(d.data(), n, k, hint_ptr(threshold));
  });
  at::Tensor message = at::zeros({sparse_message_nbytes(n, k, format)}, a.options().dtype(at::kByte));
  EFCOMM_DISPATCH_FLOAT_TYPES(a.scalar_type(), "topk_encode_cpu", [&] {
    using T = scalar_t;
    const T* ap = ac.const_data_ptr<T>();
    T* bp = b.has_value() ? b->mutable_data_ptr<T>() : nullptr;
    EFCOMM_DISPATCH_FLOAT_TYPES(format.value_dtype, "topk_encode_cpu", [&] {
      pack_entries<T, scalar_t>(ap, bp, selected, n, own_message_rule(scale),
                                format.compact ? EntryLayout::kCompact : EntryLayout::kSparse,
                                message.mutable_data_ptr<uint8_t>());
    });
  });
  return message;
}

void topk_decode_add_cpu(at::Tensor& h, const at::Tensor& gathered, int64_t k, double scale,
                         const std::optional<at::Tensor>& weights, std::optional<c10::ScalarType> value_dtype,
                         int64_t index_bits) {
  const SparseFormat format = check_topk_decode_args(h, gathered, k, scale, weights, value_dtype, index_bits);
  const int64_t rows = gathered.size(0);
  const int64_t n = h.numel();
  const int64_t row_bytes = gathered.size(1);
  const DecodeRule rule = decode_rule(weights ? weights->const_data_ptr<float>() : nullptr, rows, scale);
  std::vector<float> acc(n, 0.0f);
  std::vector<bool> carried(n, false);  // entries no message carries stay as they are
  const uint8_t* base = gathered.const_data_ptr<uint8_t>();
  EFCOMM_DISPATCH_FLOAT_TYPES(format.value_dtype, "topk_decode_add_cpu", [&] {
    for (int64_t j = 0; j < rows; ++j) {  // rank order: the same sum on every rank
      for (const auto& [i, v] : read_row<scalar_t>(base + j * row_bytes, k, n, format.compact, j)) {
        acc[i] = rule.add(acc[i], j, v);
        carried[i] = true;
      }
    }
  });
  EFCOMM_DISPATCH_FLOAT_TYPES(h.scalar_type(), "topk_decode_add_cpu", [&] {
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (carried[i]) hp[i] = add_decoded(hp[i], rule.finish(acc[i]));
    }
  });
}

TORCH_LIBRARY_IMPL(efcomm, CPU, m) {
  m.impl("topk", &topk_cpu);
  m.impl("topk_encode_", &topk_encode_cpu);
  m.impl("topk_decode_add_", &topk_decode_add_cpu);
}

}  // namespace efcomm
