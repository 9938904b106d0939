#include "kernels/topk_radix.cuh"

#include <cub/agent/single_pass_scan_operators.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda/std/functional>

#include <stdexcept>

#include "kernels/cuda_storage.cuh"
#include "kernels/launch.cuh"
#include "kernels/topk_radix_rule.h"

namespace efcomm::kernels {
namespace {

namespace rule = topk_radix;

constexpr int kBlock = 256;
constexpr int kItems = 16;                  // consecutive entries per thread per tile
constexpr int64_t kTile = kBlock * kItems;  // entries per tile
constexpr int kBinsPerThread = rule::kBins / kBlock;

// Counter slots, one per kernel that takes tiles or counts finished blocks.
constexpr int kHintedSlot = 0;
constexpr int kFinalSlot = 4;
constexpr int kSlots = 5;  // hinted, passes 0..2, final

// Ordered writes: per tile the packed count (above << 32) | ties, scanned across tiles in order.
using TileState = cub::ScanTileState<uint64_t>;
using TilePrefix = cub::TilePrefixCallbackOp<uint64_t, ::cuda::std::plus<>, TileState>;
using PairScan = cub::BlockScan<uint64_t, kBlock>;
using BinScan = cub::BlockScan<uint32_t, kBlock>;

struct Control {
  rule::State state;
  uint32_t next_tile[kSlots];
  uint32_t blocks_done[kSlots];
  uint32_t kth_key;  // the least key taken (the k-th largest), for the next hint
};

struct Workspace {
  Control* control;
  uint32_t* hist;     // [kBins], zero between passes
  uint2* candidates;  // [cap] (index, key), in index order
  int64_t cap;
  int num_tiles;       // tiles of the input
  TileState order[3];  // the ordered writes of the hinted pass, of pass 1, of the final pass
};

size_t align_up(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

struct Layout {
  int num_tiles;
  int64_t cap;
  size_t tile_state_bytes;
  size_t hist_offset, candidates_offset, order_offset, total;
};

Layout layout_of(int64_t n, int64_t k) {
  Layout l{};
  l.num_tiles = static_cast<int>((n + kTile - 1) / kTile);
  l.cap = rule::candidate_capacity(n, k);
  check_cuda(TileState::AllocationSize(l.num_tiles, l.tile_state_bytes), "cub::ScanTileState::AllocationSize");
  l.hist_offset = align_up(sizeof(Control));
  l.candidates_offset = l.hist_offset + align_up(rule::kBins * sizeof(uint32_t));
  l.order_offset = l.candidates_offset + align_up(static_cast<size_t>(l.cap) * sizeof(uint2));
  l.total = l.order_offset + 3 * align_up(l.tile_state_bytes);
  return l;
}

Workspace workspace_of(void* base, const Layout& l) {
  auto* bytes = static_cast<uint8_t*>(base);
  Workspace ws{};
  ws.control = reinterpret_cast<Control*>(bytes);
  ws.hist = reinterpret_cast<uint32_t*>(bytes + l.hist_offset);
  ws.candidates = reinterpret_cast<uint2*>(bytes + l.candidates_offset);
  ws.cap = l.cap;
  ws.num_tiles = l.num_tiles;
  for (int j = 0; j < 3; ++j) {
    void* storage = bytes + l.order_offset + j * align_up(l.tile_state_bytes);
    check_cuda(ws.order[j].Init(l.num_tiles, storage, l.tile_state_bytes), "cub::ScanTileState::Init");
  }
  return ws;
}

// ---- loading a tile: thread t holds entries [first, first + count) of the source ----

// Entries of the input: a[i], or T(a[i] - b[i]); 16-byte loads when the pointers allow.
template <typename T>
__device__ __forceinline__ void load_input(const TopkSource<T>& src, int64_t first, int count, bool vectors,
                                           T (&v)[kItems]) {
  constexpr int kPerVector = 16 / static_cast<int>(sizeof(T));
  if (vectors && count == kItems) {
#pragma unroll
    for (int w = 0; w < kItems / kPerVector; ++w) {
      const uint4 raw_a = __ldg(reinterpret_cast<const uint4*>(src.a + first) + w);
      T va[kPerVector];
      memcpy(va, &raw_a, 16);
      if (src.b != nullptr) {
        const uint4 raw_b = __ldg(reinterpret_cast<const uint4*>(src.b + first) + w);
        T vb[kPerVector];
        memcpy(vb, &raw_b, 16);
#pragma unroll
        for (int j = 0; j < kPerVector; ++j) v[w * kPerVector + j] = store<T>(load(va[j]) - load(vb[j]));
      } else {
#pragma unroll
        for (int j = 0; j < kPerVector; ++j) v[w * kPerVector + j] = va[j];
      }
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    if (q < count) {
      const int64_t i = first + q;
      v[q] = src.b != nullptr ? store<T>(load(src.a[i]) - load(src.b[i])) : src.a[i];
    }
  }
}

// Keys and indices of a tile of the source (the input, or the candidate buffer); returns count.
template <typename T>
__device__ __forceinline__ int load_tile(const TopkSource<T>& src, const Workspace& ws, bool from_candidates,
                                         int64_t len, int64_t tile, bool vectors, uint32_t (&key)[kItems],
                                         uint32_t (&index)[kItems]) {
  const int64_t first = tile * kTile + static_cast<int64_t>(threadIdx.x) * kItems;
  const int count = static_cast<int>(max(int64_t{0}, min(int64_t{kItems}, len - first)));
  if (from_candidates) {
    if (count == kItems) {  // 16 entries, 8 16-byte loads (the buffer is 256-byte aligned)
#pragma unroll
      for (int w = 0; w < kItems / 2; ++w) {
        const uint4 pair = __ldg(reinterpret_cast<const uint4*>(ws.candidates + first) + w);
        index[2 * w] = pair.x;
        key[2 * w] = pair.y;
        index[2 * w + 1] = pair.z;
        key[2 * w + 1] = pair.w;
      }
    } else {
#pragma unroll
      for (int q = 0; q < kItems; ++q) {
        const uint2 entry = q < count ? ws.candidates[first + q] : make_uint2(0u, 0u);
        index[q] = entry.x;
        key[q] = entry.y;
      }
    }
    return count;
  }
  T v[kItems];
  load_input(src, first, count, vectors, v);
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    key[q] = q < count ? rule::key_of(v[q]) : 0u;
    index[q] = static_cast<uint32_t>(first + q);
  }
  return count;
}

// ---- block helpers ----

// The next tile for this block, from the kernel's counter: tiles are taken in order, so every
// tile that an ordered write waits on belongs to a block that is running. Also the barrier
// between tiles (shared scratch is reused).
__device__ __forceinline__ int64_t next_tile(uint32_t* counter, uint32_t& slot) {
  __syncthreads();
  if (threadIdx.x == 0) slot = atomicAdd(counter, 1u);
  __syncthreads();
  return slot;
}

// Counts digit in the block's histogram for the lanes that take part: one shared atomic per
// distinct digit of the warp (no lane waits on another's increment of the same bin).
// Every lane of the warp calls it.
__device__ __forceinline__ void count_digit(uint32_t* hist, bool take, uint32_t digit) {
  const unsigned active = __ballot_sync(0xFFFFFFFFu, take);
  if (take) {
    const unsigned peers = __match_any_sync(active, digit);
    if ((threadIdx.x & 31u) == static_cast<unsigned>(__ffs(peers) - 1)) {
      atomicAdd(&hist[digit], static_cast<uint32_t>(__popc(peers)));
    }
  }
}

struct OrderedScratch {
  PairScan::TempStorage scan;
  TilePrefix::TempStorage prefix;
};

// The exclusive prefix, over the tiles before this one and the threads before this one, of each
// thread's packed count; `inclusive` gets the total up to and including this tile.
__device__ __forceinline__ uint64_t ordered_prefix(TileState& order, OrderedScratch& scratch, int64_t tile,
                                                   uint64_t mine, uint64_t& inclusive) {
  uint64_t before = 0;
  if (tile == 0) {
    uint64_t aggregate = 0;
    PairScan(scratch.scan).ExclusiveSum(mine, before, aggregate);
    if (threadIdx.x == 0) order.SetInclusive(0, aggregate);
    inclusive = aggregate;
  } else {
    TilePrefix prefix(order, scratch.prefix, ::cuda::std::plus<>{}, static_cast<int>(tile));
    PairScan(scratch.scan).ExclusiveSum(mine, before, prefix);
    inclusive = prefix.GetInclusivePrefix();
  }
  return before;
}

// True in every thread of the block that finishes last (after its writes are visible).
__device__ __forceinline__ bool finished_last(uint32_t* blocks_done, uint32_t& flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) flag = atomicAdd(blocks_done, 1u) == gridDim.x - 1 ? 1u : 0u;
  __syncthreads();
  if (flag != 0) __threadfence();  // acquire: the other blocks' writes before the reads that follow
  return flag != 0;
}

// ---- kernels ----

__global__ void init_kernel(Workspace ws, int64_t k) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t == 0) {
    Control& ctl = *ws.control;
    ctl.state = rule::initial_state(k);
    for (int s = 0; s < kSlots; ++s) {
      ctl.next_tile[s] = 0;
      ctl.blocks_done[s] = 0;
    }
    ctl.kth_key = ~0u;
  }
  if (t < rule::kBins) ws.hist[t] = 0;
  for (int j = 0; j < 3; ++j) ws.order[j].InitializeStatus(ws.num_tiles);
}

// The entries that reach tau (hint[0]) in index order, the first cap of them kept; the block of
// the last tile decides from the total whether they hold the Top-k.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    hinted_kernel(TopkSource<T> src, int64_t n, int64_t k, Workspace ws, const float* hint, bool vectors) {
  __shared__ OrderedScratch scratch;
  __shared__ uint32_t slot;
  Control& ctl = *ws.control;
  const float tau = hint[0];
  for (;;) {
    const int64_t tile = next_tile(&ctl.next_tile[kHintedSlot], slot);
    if (tile >= ws.num_tiles) break;
    const int64_t first = tile * kTile + static_cast<int64_t>(threadIdx.x) * kItems;
    const int count = static_cast<int>(max(int64_t{0}, min(int64_t{kItems}, n - first)));
    T v[kItems];
    load_input(src, first, count, vectors, v);
    uint32_t mine = 0;
#pragma unroll
    for (int q = 0; q < kItems; ++q) mine += q < count && rule::reaches_hint(load(v[q]), tau) ? 1u : 0u;
    uint64_t total = 0;
    uint64_t position = ordered_prefix(ws.order[0], scratch, tile, mine, total);
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      if (q < count && rule::reaches_hint(load(v[q]), tau)) {
        if (static_cast<int64_t>(position) < ws.cap) {
          ws.candidates[position] = make_uint2(static_cast<uint32_t>(first + q), rule::key_of(v[q]));
        }
        ++position;
      }
    }
    if (tile == ws.num_tiles - 1 && threadIdx.x == 0) {  // total: every entry that reaches tau
      rule::State s = ctl.state;
      if (rule::hint_holds(static_cast<uint32_t>(total), k, ws.cap)) {
        rule::use_candidates(s, static_cast<uint32_t>(total));
      } else {
        s.fell_back = 1u;
      }
      ctl.state = s;
    }
  }
}

// Pass p: the histogram of digit p among the entries that match the prefix (fused with the
// filter of the pass before), in pass 1 over the input also the ordered write of the entries at
// or above pass 0's bin; the last block chooses the bin of the k-th and advances the state.
template <typename T>
__global__ void __launch_bounds__(kBlock, 3)
    pass_kernel(TopkSource<T> src, int64_t n, Workspace ws, int pass, bool vectors) {
  __shared__ uint32_t hist[rule::kBins];
  __shared__ union {
    OrderedScratch ordered;
    BinScan::TempStorage bins;
  } scratch;
  __shared__ uint32_t slot, last, found[3];
  Control& ctl = *ws.control;
  const rule::State s = ctl.state;
  if (s.done) return;
  const rule::Plan plan = rule::plan_for(rule::key_bits<T>());
  const bool compact = s.compact_next != 0;
  const int64_t len = s.from_candidates ? s.candidates : n;
  const int64_t tiles = (len + kTile - 1) / kTile;
  for (int b = threadIdx.x; b < rule::kBins; b += kBlock) hist[b] = 0;
  for (;;) {
    const int64_t tile = next_tile(&ctl.next_tile[1 + pass], slot);
    if (tile >= tiles) break;
    uint32_t key[kItems], index[kItems];
    const int count = load_tile(src, ws, s.from_candidates != 0, len, tile, vectors, key, index);
    uint32_t mine = 0;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const uint32_t top = plan.top(key[q], s.decided);
      count_digit(hist, q < count && top == s.prefix, plan.digit(key[q], pass));
      mine += q < count && top >= s.prefix ? 1u : 0u;
    }
    if (compact) {  // the same in every block: s.candidates entries in all, all within cap
      uint64_t total = 0;
      uint64_t position = ordered_prefix(ws.order[1], scratch.ordered, tile, mine, total);
#pragma unroll
      for (int q = 0; q < kItems; ++q) {
        if (q < count && plan.top(key[q], s.decided) >= s.prefix)
          ws.candidates[position++] = make_uint2(index[q], key[q]);
      }
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < rule::kBins; b += kBlock) {
    if (hist[b] != 0) atomicAdd(&ws.hist[b], hist[b]);
  }
  if (!finished_last(&ctl.blocks_done[1 + pass], last)) return;

  // The last block: bins from the top, kBinsPerThread consecutive ones per thread.
  uint32_t counts[kBinsPerThread], above[kBinsPerThread];
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j)
    counts[j] = __ldcg(&ws.hist[rule::kBins - 1 - (threadIdx.x * kBinsPerThread + j)]);
  BinScan(scratch.bins).ExclusiveSum(counts, above);
  if (threadIdx.x == 0) found[0] = found[1] = found[2] = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {
    if (rule::holds_kth(above[j], counts[j], s.k_rem)) {  // exactly one bin
      found[0] = rule::kBins - 1 - (threadIdx.x * kBinsPerThread + j);
      found[1] = above[j];
      found[2] = counts[j];
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < rule::kBins; b += kBlock) ws.hist[b] = 0;  // for the next pass
  if (threadIdx.x == 0) {
    rule::State next = s;
    if (compact) rule::use_candidates(next, s.candidates);
    rule::advance(next, plan, pass, found[0], found[1], found[2], static_cast<uint32_t>(ws.cap));
    ctl.state = next;
  }
}

// The k selected indices in index order; with a hint, the next hint from the least key taken.
template <typename T>
__global__ void __launch_bounds__(kBlock, 3)
    final_kernel(TopkSource<T> src, int64_t n, Workspace ws, float* hint, bool vectors, int32_t* __restrict__ out) {
  __shared__ OrderedScratch scratch;
  __shared__ uint32_t slot, last, warp_min[kBlock / 32];
  Control& ctl = *ws.control;
  const rule::State s = ctl.state;
  const rule::Plan plan = rule::plan_for(rule::key_bits<T>());
  const int64_t len = s.from_candidates ? s.candidates : n;
  const int64_t tiles = (len + kTile - 1) / kTile;
  uint32_t kth = ~0u;
  for (;;) {
    const int64_t tile = next_tile(&ctl.next_tile[kFinalSlot], slot);
    if (tile >= tiles) break;
    uint32_t key[kItems], index[kItems];
    const int count = load_tile(src, ws, s.from_candidates != 0, len, tile, vectors, key, index);
    uint32_t above = 0, ties = 0;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const rule::Rank r = q < count ? rule::rank_of(plan, s, key[q]) : rule::kBelow;
      above += r == rule::kAbove ? 1u : 0u;
      ties += r == rule::kTie ? 1u : 0u;
    }
    uint64_t total = 0;
    const uint64_t before =
        ordered_prefix(ws.order[2], scratch, tile, (static_cast<uint64_t>(above) << 32) | ties, total);
    uint32_t above_before = static_cast<uint32_t>(before >> 32);
    uint32_t ties_before = static_cast<uint32_t>(before);
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const rule::Rank r = q < count ? rule::rank_of(plan, s, key[q]) : rule::kBelow;
      if (rule::taken(r, ties_before, s.k_rem)) {
        out[rule::position(above_before, ties_before, s.k_rem)] = static_cast<int32_t>(index[q]);
        kth = min(kth, key[q]);
      }
      above_before += r == rule::kAbove ? 1u : 0u;
      ties_before += r == rule::kTie ? 1u : 0u;
    }
  }
  if (hint == nullptr) return;
  for (int offset = 16; offset > 0; offset /= 2) kth = min(kth, __shfl_down_sync(0xFFFFFFFFu, kth, offset));
  if ((threadIdx.x & 31u) == 0) warp_min[threadIdx.x / 32] = kth;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kBlock / 32; ++w) kth = min(kth, warp_min[w]);
    atomicMin(&ctl.kth_key, kth);
  }
  if (!finished_last(&ctl.blocks_done[kFinalSlot], last)) return;
  if (threadIdx.x == 0) {
    hint[0] = rule::next_hint(rule::magnitude_of<T>(__ldcg(&ctl.kth_key)));
    hint[1] = s.fell_back ? 1.0f : 0.0f;
  }
}

}  // namespace

template <typename T>
size_t topk_radix_workspace(int64_t n, int64_t k) {
  return layout_of(n, k).total;
}

template <typename T>
void topk_radix_select(TopkSource<T> src, int64_t n, int64_t k, float* hint, void* workspace, size_t workspace_bytes,
                       int32_t* out_indices, cudaStream_t stream) {
  const Layout layout = layout_of(n, k);
  if (workspace_bytes < layout.total) throw std::runtime_error("efcomm: topk_radix_select workspace too small");
  const Workspace ws = workspace_of(workspace, layout);
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vectors = aligned(src.a) && (src.b == nullptr || aligned(src.b));
  const unsigned int grid = resident_grid(layout.num_tiles);
  const int init_threads = std::max(layout.num_tiles, rule::kBins);
  init_kernel<<<(init_threads + kBlock - 1) / kBlock, kBlock, 0, stream>>>(ws, k);
  check_launch("topk radix init");
  if (hint != nullptr) {
    hinted_kernel<T><<<grid, kBlock, 0, stream>>>(src, n, k, ws, hint, vectors);
    check_launch("topk radix hinted");
  }
  const rule::Plan plan = rule::plan_for(rule::key_bits<T>());
  for (int pass = 0; pass < plan.passes; ++pass) {
    pass_kernel<T><<<grid, kBlock, 0, stream>>>(src, n, ws, pass, vectors);
    check_launch("topk radix pass");
  }
  final_kernel<T><<<grid, kBlock, 0, stream>>>(src, n, ws, hint, vectors, out_indices);
  check_launch("topk radix final");
}

#define EFCOMM_INSTANTIATE(T)                                \
  template size_t topk_radix_workspace<T>(int64_t, int64_t); \
  template void topk_radix_select<T>(TopkSource<T>, int64_t, int64_t, float*, void*, size_t, int32_t*, cudaStream_t);

EFCOMM_INSTANTIATE(float)
EFCOMM_INSTANTIATE(__half)
EFCOMM_INSTANTIATE(__nv_bfloat16)
#undef EFCOMM_INSTANTIATE

}  // namespace efcomm::kernels
