#include "kernels/topk_select.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <iterator>

#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"

namespace efcomm::kernels {

// An output iterator for cub::DeviceSelect that keeps the first `cap` items and drops the
// rest (the count still counts them), so that the buffer is sized by the bound, not by n.
struct BoundedWrite {
  int64_t* out;
  int64_t cap;
  int64_t pos;
  __device__ BoundedWrite& operator=(int64_t value) {
    if (pos < cap) out[pos] = value;
    return *this;
  }
};

struct BoundedOutput {
  using iterator_category = std::random_access_iterator_tag;
  using value_type = int64_t;
  using difference_type = ::cuda::std::int64_t;
  using pointer = void;
  using reference = BoundedWrite;
  int64_t* out;
  int64_t cap;
  int64_t pos;
  __host__ __device__ BoundedWrite operator*() const { return {out, cap, pos}; }
  __host__ __device__ BoundedWrite operator[](difference_type i) const { return {out, cap, pos + i}; }
  __host__ __device__ BoundedOutput operator+(difference_type i) const { return {out, cap, pos + i}; }
  __host__ __device__ BoundedOutput operator-(difference_type i) const { return {out, cap, pos - i}; }
  __host__ __device__ difference_type operator-(const BoundedOutput& other) const { return pos - other.pos; }
  __host__ __device__ BoundedOutput& operator+=(difference_type i) {
    pos += i;
    return *this;
  }
  __host__ __device__ BoundedOutput& operator-=(difference_type i) {
    pos -= i;
    return *this;
  }
  __host__ __device__ BoundedOutput& operator++() {
    ++pos;
    return *this;
  }
  __host__ __device__ BoundedOutput operator++(int) {
    BoundedOutput old = *this;
    ++pos;
    return old;
  }
  __host__ __device__ BoundedOutput& operator--() {
    --pos;
    return *this;
  }
  __host__ __device__ bool operator==(const BoundedOutput& other) const { return pos == other.pos; }
  __host__ __device__ bool operator!=(const BoundedOutput& other) const { return pos != other.pos; }
};

namespace {

// A value's key: the bits of its magnitude (they order magnitudes), every NaN the largest key.
template <typename T>
struct KeyBits {
  static constexpr int bits = 8 * static_cast<int>(sizeof(T)) - 1;
  __device__ static uint32_t of(T v) {
    uint32_t raw = 0;
    memcpy(&raw, &v, sizeof(T));
    const uint32_t mask = (1u << bits) - 1u;
    const uint32_t magnitude = raw & mask;
    return magnitude > infinity_bits(StorageTraits<T>::kFormat) ? mask : magnitude;
  }
};

template <typename T>
__device__ __forceinline__ T source_value(const TopkSource<T>& src, int64_t i) {
  if (src.b == nullptr) return src.a[i];
  return store<T>(load(src.a[i]) - load(src.b[i]));
}

template <typename T>
__device__ __forceinline__ uint32_t key_at(const TopkSource<T>& src, int64_t i) {
  return KeyBits<T>::of(source_value(src, i));
}

template <typename T>
__device__ __forceinline__ uint32_t bin_of(uint32_t key) {
  return key >> (KeyBits<T>::bits - 12);
}

template <typename T>
__global__ void histogram_kernel(TopkSource<T> src, int64_t n, uint32_t* __restrict__ hist) {
  __shared__ uint32_t local[kTopkBins];
  for (int b = threadIdx.x; b < kTopkBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    atomicAdd(&local[bin_of<T>(key_at(src, i))], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kTopkBins; b += blockDim.x) {
    if (local[b] != 0) atomicAdd(&hist[b], local[b]);
  }
}

// One thread: the bin where the count from the top first reaches k.
__global__ void boundary_bin_kernel(const uint32_t* __restrict__ hist, int64_t k, int64_t* info) {
  int64_t above = 0;
  for (int b = kTopkBins - 1; b >= 0; --b) {
    if (above + hist[b] >= k || b == 0) {
      info[0] = b;
      info[1] = above;
      info[2] = hist[b];
      return;
    }
    above += hist[b];
  }
}

template <typename T>
struct InOrAboveBin {
  TopkSource<T> src;
  const int64_t* info;
  __device__ bool operator()(int64_t i) const { return static_cast<int64_t>(bin_of<T>(key_at(src, i))) >= info[0]; }
};

template <typename T>
__global__ void candidate_keys_kernel(TopkSource<T> src, const int64_t* __restrict__ candidates,
                                      const int64_t* __restrict__ count, uint32_t* __restrict__ keys) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < *count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[t] = key_at(src, candidates[t]);
  }
}

// scalars[0] = T, the k-th largest key; scalars[1] = how many entries equal to T are taken.
__global__ void threshold_kernel(const uint32_t* __restrict__ sorted_desc, int64_t k, int64_t* scalars) {
  const uint32_t threshold = sorted_desc[k - 1];
  int64_t lo = 0, hi = k - 1;  // the first position holding the threshold
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted_desc[mid] > threshold)
      lo = mid + 1;
    else
      hi = mid;
  }
  scalars[0] = threshold;
  scalars[1] = k - lo;
}

template <typename T>
struct EqualsThreshold {
  TopkSource<T> src;
  const int64_t* scalars;
  __device__ bool operator()(int64_t i) const { return static_cast<int64_t>(key_at(src, i)) == scalars[0]; }
};

// scalars[2] = the index of the last entry equal to T that is taken.
__global__ void last_tie_kernel(const int64_t* __restrict__ equal_indices, int64_t* scalars) {
  scalars[2] = equal_indices[scalars[1] - 1];
}

template <typename T>
struct Selected {
  TopkSource<T> src;
  const int64_t* scalars;
  __device__ bool operator()(int64_t i) const {
    const auto key = static_cast<int64_t>(key_at(src, i));
    return key > scalars[0] || (key == scalars[0] && i <= scalars[2]);
  }
};

// The hinted path's candidates: magnitude at least hint[0], or NaN (ranks above all).
template <typename T>
struct ReachesHint {
  TopkSource<T> src;
  const float* hint;
  __device__ bool operator()(int64_t i) const {
    const float v = load(source_value(src, i));
    return isnan(v) || fabsf(v) >= hint[0];
  }
};

// The magnitude of a key (the key is the magnitude's bit pattern; NaN keys give NaN).
template <typename T>
__device__ float key_magnitude(uint32_t key);
template <>
__device__ float key_magnitude<float>(uint32_t key) {
  return key >= 0x7F800001u ? __int_as_float(0x7FC00000) : __uint_as_float(key);
}
template <>
__device__ float key_magnitude<__half>(uint32_t key) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(key)));
}
template <>
__device__ float key_magnitude<__nv_bfloat16>(uint32_t key) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(key)));
}

// hint[0] = float32(kTopkHintMargin * |k-th largest|) when that is finite and positive,
// else 0 (no hint: the next call selects exactly); hint[1] = fell_back.
template <typename T>
__global__ void next_hint_kernel(const int64_t* __restrict__ scalars, float fell_back, float* hint) {
  const float next = __fmul_rn(kTopkHintMargin, key_magnitude<T>(static_cast<uint32_t>(scalars[0])));
  hint[0] = isfinite(next) && next > 0.0f ? next : 0.0f;
  hint[1] = fell_back;
}

__global__ void narrow_indices_kernel(const int64_t* __restrict__ wide, int64_t k, int32_t* __restrict__ out) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[t] = static_cast<int32_t>(wide[t]);
  }
}

size_t align_up(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// Temporary storage of cub::DeviceSelect::If over `items` entries of `in` into int64 indices.
template <typename In, typename Predicate>
size_t select_bytes(In in, int64_t items, Predicate predicate) {
  size_t bytes = 0;
  check_cuda(cub::DeviceSelect::If(nullptr, bytes, in, static_cast<int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
                                   static_cast<::cuda::std::int64_t>(items), predicate),
             "cub::DeviceSelect::If (size query)");
  return bytes;
}

// The workspace of topk_finish: three int64 arrays of m entries (the candidates, the ties, the
// selection), two uint32 arrays of m (the keys, the sorted keys), 32 int64 scalars (three results,
// three counts; 256 bytes), then CUB's temporary storage; m = the candidates rounded up to 64, so
// that every part starts 256-byte aligned.
struct FinishLayout {
  int64_t m;
  size_t cub_temp, total;
};

template <typename T>
FinishLayout finish_layout(int64_t n, int64_t candidates) {
  FinishLayout layout{};
  layout.m = (candidates + 63) / 64 * 64;
  // The largest temporary storage of the CUB calls (queried with null storage).
  const thrust::counting_iterator<int64_t> first(0);
  const auto* given = static_cast<const int64_t*>(nullptr);
  const TopkSource<T> none{nullptr, nullptr};
  size_t sort = 0;
  check_cuda(cub::DeviceRadixSort::SortKeysDescending(nullptr, sort, static_cast<const uint32_t*>(nullptr),
                                                      static_cast<uint32_t*>(nullptr), candidates, 0, KeyBits<T>::bits),
             "cub::DeviceRadixSort::SortKeysDescending (size query)");
  const size_t temp = std::max({select_bytes(first, n, InOrAboveBin<T>{none, nullptr}),
                                select_bytes(given, candidates, Selected<T>{none, nullptr}),
                                select_bytes(given, candidates, EqualsThreshold<T>{none, nullptr}), sort});
  layout.cub_temp = align_up(temp);
  layout.total = static_cast<size_t>(layout.m) * (3 * sizeof(int64_t) + 2 * sizeof(uint32_t)) + 32 * sizeof(int64_t) +
                 layout.cub_temp;
  return layout;
}

}  // namespace

template <typename T>
void topk_histogram(TopkSource<T> src, int64_t n, int64_t k, uint32_t* hist, int64_t* info, cudaStream_t stream) {
  check_cuda(cudaMemsetAsync(hist, 0, kTopkBins * sizeof(uint32_t), stream), "cudaMemsetAsync");
  histogram_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(src, n, hist);
  check_launch("topk histogram");
  boundary_bin_kernel<<<1, 1, 0, stream>>>(hist, k, info);
  check_launch("topk boundary bin");
}

template <typename T>
size_t topk_finish_workspace(int64_t n, int64_t candidates) {
  return finish_layout<T>(n, candidates).total;
}

template <typename T>
void topk_finish(TopkSource<T> src, int64_t n, int64_t k, const int64_t* info, int64_t candidates, void* workspace,
                 size_t workspace_bytes, int32_t* out_indices, cudaStream_t stream, const int64_t* given_candidates,
                 const int64_t* given_count, float* hint, bool fell_back) {
  const FinishLayout layout = finish_layout<T>(n, candidates);
  if (workspace_bytes < layout.total) throw std::runtime_error("efcomm: topk_finish workspace too small");
  const int64_t m = layout.m;
  auto* cand = static_cast<int64_t*>(workspace);
  int64_t* equal = cand + m;
  int64_t* wide = equal + m;
  auto* keys = reinterpret_cast<uint32_t*>(wide + m);
  uint32_t* sorted = keys + m;
  auto* scalars = reinterpret_cast<int64_t*>(sorted + m);
  int64_t* counts = scalars + 3;
  void* temp = scalars + 32;
  size_t temp_bytes = layout.cub_temp;

  const thrust::counting_iterator<int64_t> first(0);
  const int64_t* cand_in = cand;
  const int64_t* count = counts;
  if (given_candidates != nullptr) {  // the hinted path's candidates and their count, read in place
    cand_in = given_candidates;
    count = given_count;
  } else {
    // The entries in or above the boundary bin, in index order (exactly `candidates` of them).
    check_cuda(cub::DeviceSelect::If(temp, temp_bytes, first, cand, counts, static_cast<::cuda::std::int64_t>(n),
                                     InOrAboveBin<T>{src, info}, stream),
               "cub::DeviceSelect::If (candidates)");
  }
  candidate_keys_kernel<T><<<grid_for(candidates), kThreads, 0, stream>>>(src, cand_in, count, keys);
  check_launch("topk candidate keys");
  temp_bytes = layout.cub_temp;
  check_cuda(
      cub::DeviceRadixSort::SortKeysDescending(temp, temp_bytes, keys, sorted, candidates, 0, KeyBits<T>::bits, stream),
      "cub::DeviceRadixSort::SortKeysDescending");
  threshold_kernel<<<1, 1, 0, stream>>>(sorted, k, scalars);
  check_launch("topk threshold");
  // The candidates equal to the threshold, in index order; the first scalars[1] are taken.
  temp_bytes = layout.cub_temp;
  check_cuda(
      cub::DeviceSelect::If(temp, temp_bytes, cand_in, equal, counts + 1, static_cast<::cuda::std::int64_t>(candidates),
                            EqualsThreshold<T>{src, scalars}, stream),
      "cub::DeviceSelect::If (ties)");
  last_tie_kernel<<<1, 1, 0, stream>>>(equal, scalars);
  check_launch("topk last tie");
  temp_bytes = layout.cub_temp;
  check_cuda(cub::DeviceSelect::If(temp, temp_bytes, cand_in, wide, counts + 2,
                                   static_cast<::cuda::std::int64_t>(candidates), Selected<T>{src, scalars}, stream),
             "cub::DeviceSelect::If (selection)");
  narrow_indices_kernel<<<grid_for(k), kThreads, 0, stream>>>(wide, k, out_indices);
  check_launch("topk narrow indices");
  if (hint != nullptr) {
    next_hint_kernel<T><<<1, 1, 0, stream>>>(scalars, fell_back ? 1.0f : 0.0f, hint);
    check_launch("topk next hint");
  }
}

template <typename T>
size_t topk_hinted_workspace(int64_t n, int64_t cap) {
  size_t bytes = 0;
  const thrust::counting_iterator<int64_t> first(0);
  const TopkSource<T> none{nullptr, nullptr};
  check_cuda(
      cub::DeviceSelect::If(nullptr, bytes, first, BoundedOutput{nullptr, cap, 0}, static_cast<int64_t*>(nullptr),
                            static_cast<::cuda::std::int64_t>(n), ReachesHint<T>{none, nullptr}),
      "cub::DeviceSelect::If (size query)");
  return bytes;
}

template <typename T>
void topk_hinted_candidates(TopkSource<T> src, int64_t n, const float* hint, int64_t cap, void* workspace,
                            size_t workspace_bytes, int64_t* candidates, int64_t* count, cudaStream_t stream) {
  const thrust::counting_iterator<int64_t> first(0);
  check_cuda(cub::DeviceSelect::If(workspace, workspace_bytes, first, BoundedOutput{candidates, cap, 0}, count,
                                   static_cast<::cuda::std::int64_t>(n), ReachesHint<T>{src, hint}, stream),
             "cub::DeviceSelect::If (hinted candidates)");
}

#define EFCOMM_INSTANTIATE(T)                                                                                     \
  template void topk_histogram<T>(TopkSource<T>, int64_t, int64_t, uint32_t*, int64_t*, cudaStream_t);            \
  template size_t topk_finish_workspace<T>(int64_t, int64_t);                                                     \
  template void topk_finish<T>(TopkSource<T>, int64_t, int64_t, const int64_t*, int64_t, void*, size_t, int32_t*, \
                               cudaStream_t, const int64_t*, const int64_t*, float*, bool);                       \
  template size_t topk_hinted_workspace<T>(int64_t, int64_t);                                                     \
  template void topk_hinted_candidates<T>(TopkSource<T>, int64_t, const float*, int64_t, void*, size_t, int64_t*, \
                                          int64_t*, cudaStream_t);

EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
