#pragma once
// A host emulation of the sync-free Top-k select (kernels/topk_radix.cu), for the CPU tests: the
// same rules (kernels/topk_radix_rule.h: keys, digits, the bin choice, the state, the order of
// the output, the hint), the same kernels in the same order, each run sequentially. The kernels'
// results do not depend on the order in which their blocks run: a histogram is a sum, and the
// ordered writes place entries by their rank in index order, which is what a sequential loop
// gives.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "kernels/topk_radix_rule.h"

namespace efcomm::testing {

// What the emulated kernels did, for tests that check which paths ran.
struct RadixTrace {
  bool hint_held = false;  // the hinted kernel's candidates hold the Top-k
  int passes_run = 0;      // passes before the early stop
  bool compacted = false;  // pass 1 wrote the entries at or above pass 0's bin
  bool final_from_candidates = false;
  int decided = 0;                 // key bits decided when the selection was fixed
  std::vector<uint32_t> pass_len;  // per pass run: entries in the chosen bin
};

// The k indices (ascending) that topk_radix_select writes for a (b null) or T(a - b); with
// hint, reads and rewrites it as the final kernel does.
template <typename T>
std::vector<int32_t> emulate_topk_radix(const T* a, const T* b, int64_t n, int64_t k, float* hint,
                                        RadixTrace* trace = nullptr) {
  namespace rule = topk_radix;
  RadixTrace local;
  RadixTrace& tr = trace != nullptr ? *trace : local;
  const rule::Plan plan = rule::plan_for(rule::key_bits<T>());
  const int64_t cap = rule::candidate_capacity(n, k);
  auto value = [&](int64_t i) { return b != nullptr ? store<T>(load(a[i]) - load(b[i])) : a[i]; };
  struct Entry {
    uint32_t index, key;
  };
  std::vector<Entry> candidates;  // the buffer: at most cap entries
  rule::State s = rule::initial_state(k);
  auto for_each_source = [&](auto&& fn) {
    if (s.from_candidates) {
      for (uint32_t t = 0; t < s.candidates; ++t) fn(candidates[t].index, candidates[t].key);
    } else {
      for (int64_t i = 0; i < n; ++i) fn(static_cast<uint32_t>(i), rule::key_of(value(i)));
    }
  };

  if (hint != nullptr) {  // hinted_kernel
    uint32_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T v = value(i);
      if (!rule::reaches_hint(load(v), hint[0])) continue;
      if (total < cap) candidates.push_back({static_cast<uint32_t>(i), rule::key_of(v)});
      ++total;
    }
    tr.hint_held = rule::hint_holds(total, k, cap);
    if (tr.hint_held) {
      rule::use_candidates(s, total);
    } else {
      s.fell_back = 1u;
    }
  }

  for (int pass = 0; pass < plan.passes && !s.done; ++pass) {  // pass_kernel
    std::vector<uint32_t> hist(rule::kBins, 0);
    std::vector<Entry> written;
    const bool compact = s.compact_next != 0;
    for_each_source([&](uint32_t i, uint32_t key) {
      const uint32_t top = plan.top(key, s.decided);
      if (top == s.prefix) ++hist[plan.digit(key, pass)];
      if (compact && top >= s.prefix) written.push_back({i, key});
    });
    // As the last block does: every bin tested on its own against the count above it; the
    // kernel relies on exactly one passing.
    uint32_t above_bin = 0, above = 0, bucket = 0, count = 0;
    int passing = 0;
    for (int bin = rule::kBins - 1; bin >= 0; --bin) {
      if (rule::holds_kth(above_bin, hist[bin], s.k_rem)) {
        bucket = static_cast<uint32_t>(bin);
        count = hist[bin];
        above = above_bin;
        ++passing;
      }
      above_bin += hist[bin];
    }
    if (passing != 1) throw std::logic_error("the k-th largest key is not in exactly one bin");
    if (compact) {
      if (written.size() != s.candidates) throw std::logic_error("pass 1 wrote a count pass 0 did not predict");
      candidates = written;
      rule::use_candidates(s, s.candidates);
      tr.compacted = true;
    }
    rule::advance(s, plan, pass, bucket, above, count, static_cast<uint32_t>(cap));
    tr.passes_run = pass + 1;
    tr.pass_len.push_back(count);
  }
  tr.decided = s.decided;
  tr.final_from_candidates = s.from_candidates != 0;

  std::vector<int32_t> out(k, -1);  // final_kernel
  uint32_t above_before = 0, ties_before = 0, kth = ~0u;
  for_each_source([&](uint32_t i, uint32_t key) {
    const rule::Rank r = rule::rank_of(plan, s, key);
    if (rule::taken(r, ties_before, s.k_rem)) {
      const uint32_t p = rule::position(above_before, ties_before, s.k_rem);
      if (p >= static_cast<uint32_t>(k)) throw std::logic_error("an output position past k");
      out[p] = static_cast<int32_t>(i);
      kth = std::min(kth, key);
    }
    above_before += r == rule::kAbove ? 1u : 0u;
    ties_before += r == rule::kTie ? 1u : 0u;
  });
  if (hint != nullptr) {
    hint[0] = rule::next_hint(rule::magnitude_of<T>(kth));
    hint[1] = s.fell_back ? 1.0f : 0.0f;
  }
  return out;
}

}  // namespace efcomm::testing
