#pragma once
// The dtypes every efcomm op accepts for gradients and error-feedback state.
#include <ATen/Dispatch.h>

#define EFCOMM_DISPATCH_CASE_FLOAT_TYPES(...)             \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)    \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)

// Binds scalar_t to float, c10::BFloat16 or c10::Half; any other dtype throws.
#define EFCOMM_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, EFCOMM_DISPATCH_CASE_FLOAT_TYPES(__VA_ARGS__))
