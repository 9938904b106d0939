#pragma once
// The one registry of the blockwise quantizer schemes: a scheme's id is its place in
// EFCOMM_QUANT_SCHEMES. The name lookup (csrc/), the CPU reference and the CUDA kernels'
// instantiations all go through this list; adding a scheme is its codec header in
// kernels/quant/ (the interface: kernels/quant_block.h) and one line here.
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/quant/fp8.h"
#include "kernels/quant/int4.h"
#include "kernels/quant/int8.h"
#include "kernels/quant/natural.h"
#include "kernels/quant/qsgd.h"
#include "kernels/quant/sign.h"

#define EFCOMM_QUANT_SCHEMES(X)    \
  X(::efcomm::quant::QsgdCodec)    \
  X(::efcomm::quant::NaturalCodec) \
  X(::efcomm::quant::SignCodec)    \
  X(::efcomm::quant::Int8Codec)    \
  X(::efcomm::quant::Fp8Codec)     \
  X(::efcomm::quant::Int4Codec)

namespace efcomm::quant {

// fn(Codec{}) for the scheme with this id; false when there is none.
template <typename Fn>
bool with_codec(int32_t id, Fn&& fn) {
  int32_t next = 0;
#define EFCOMM_VISIT_SCHEME(Codec) \
  if (id == next++) {              \
    fn(Codec{});                   \
    return true;                   \
  }
  EFCOMM_QUANT_SCHEMES(EFCOMM_VISIT_SCHEME)
#undef EFCOMM_VISIT_SCHEME
  return false;
}

// The id of the scheme called `name`, or -1.
inline int32_t scheme_id(const std::string& name) {
  int32_t id = 0;
#define EFCOMM_FIND_SCHEME(Codec)      \
  if (name == Codec::kName) return id; \
  ++id;
  EFCOMM_QUANT_SCHEMES(EFCOMM_FIND_SCHEME)
#undef EFCOMM_FIND_SCHEME
  return -1;
}

// "'qsgd', 'natural', ...": the names, for error messages.
inline std::string scheme_names() {
  std::string names;
#define EFCOMM_NAME_SCHEME(Codec)       \
  names += names.empty() ? "'" : ", '"; \
  names += Codec::kName;                \
  names += "'";
  EFCOMM_QUANT_SCHEMES(EFCOMM_NAME_SCHEME)
#undef EFCOMM_NAME_SCHEME
  return names;
}

}  // namespace efcomm::quant
