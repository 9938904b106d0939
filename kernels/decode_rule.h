#pragma once
// The decode rule of every efcomm family, written once (torch-free, host and device): every CPU
// reference and every CUDA decode kernel sums with these functions.
//
// For an entry i that some of the `rows` gathered messages carries, v_j its value in row j:
//
//   acc = 0;  for j in rank order: acc = float32(acc + (weights ? float32(w_j * v_j) : v_j))
//   c = weights ? acc : float32(acc * float32(1 / rows));  c = float32(c * float32(scale))
//   h_i = T(float(h_i) + c)                                 (a NaN written canonical)
//
// Entries that no message carries are left untouched. The order never depends on the device
// or the data, and no operation is fused (the build turns contraction off), so every rank
// computes the same bits. An encode that updates its state b applies the same rule to its own
// message alone (rows = 1, no weights): b_i = T(float(b_i) + float32(scale * float32(0 + v_i))),
// exactly what decode_add_(b, message[None], scale) does (the sum starts at +0, so a value -0
// adds +0).
#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/storage.h"

namespace efcomm {

struct DecodeRule {
  const float* weights;  // [rows] on the device that decodes, or null
  float inv_rows;        // float32(1 / rows)
  float scale;           // float32(scale)

  EFCOMM_HD float add(float acc, int64_t row, float v) const {
    return acc + (weights != nullptr ? weights[row] * v : v);
  }

  EFCOMM_HD float finish(float acc) const {
    const float c = weights != nullptr ? acc : acc * inv_rows;
    return c * scale;
  }

  // c of an entry that one row carries, with value v.
  EFCOMM_HD float single(float v) const { return finish(add(0.0f, 0, v)); }
};

EFCOMM_HD DecodeRule decode_rule(const float* weights, int64_t rows, double scale) {
  return DecodeRule{weights, 1.0f / static_cast<float>(rows), static_cast<float>(scale)};
}

// The rule for an encoder's own message (its state update).
EFCOMM_HD DecodeRule own_message_rule(double scale) {
  return decode_rule(nullptr, 1, scale);
}

template <typename T>
EFCOMM_HD T add_decoded(T h, float c) {
  return store<T>(load(h) + c);
}

// An encoder's entry i that its message carries: d_i = T(float(a_i) - float(b_i)) (b given) or
// a_i, NaN canonical, returned as the value to send; with b, b_i takes what the decode of the
// message alone adds there (`own` = own_message_rule(scale)).
template <typename T>
EFCOMM_HD T encode_entry(const T* a, T* b, int64_t i, const DecodeRule& own) {
  const T value = store<T>(b != nullptr ? load(a[i]) - load(b[i]) : load(a[i]));
  if (b != nullptr) b[i] = add_decoded(b[i], own.single(load(value)));
  return value;
}

// Rows of values at the same positions (dense messages; Rand-k with shared indices): value t of
// row j belongs to entry indices[t], or to entry t when indices is null.
template <typename T, typename Index>
struct ValueRows {
  const uint8_t* gathered;
  int64_t row_bytes;
  const Index* indices;

  EFCOMM_HD float value(int64_t j, int64_t t) const {
    return load(reinterpret_cast<const T*>(gathered + j * row_bytes)[t]);
  }
  EFCOMM_HD int64_t index(int64_t t) const { return indices != nullptr ? static_cast<int64_t>(indices[t]) : t; }
};

// The rule for one entry of a family whose rows hold their values at the same positions
// (dense, Rand-k with shared indices, quantizers): reader.value(j, t) is v_j of the entry at
// position t, reader.index(t) the entry of h it updates.
template <typename T, typename Reader>
EFCOMM_HD void decode_position(T* h, const Reader& reader, int64_t t, int64_t rows, const DecodeRule& rule) {
  float acc = 0.0f;
  for (int64_t j = 0; j < rows; ++j) acc = rule.add(acc, j, reader.value(j, t));
  const int64_t i = reader.index(t);
  h[i] = add_decoded(h[i], rule.finish(acc));
}

}  // namespace efcomm
