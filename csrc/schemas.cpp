// Every op of the efcomm namespace, declared once. In-place arguments are marked (a!) and the
// op name ends in `_`. Each family's implementations register themselves next to their code:
// csrc/<family>_cpu.cpp (the reference) and csrc/<family>_cuda.cpp; the contract is in
// csrc/ops.h.
#include <torch/library.h>

#include "csrc/message_layout.h"

TORCH_LIBRARY(efcomm, m) {
  // selection and index helpers
  m.def("topk(Tensor x, int k, Tensor(t!)? threshold=None) -> (Tensor values, Tensor indices)");
  m.def("randk_indices(Tensor x, int k, int seed, int step, int bucket, bool window, int? rank=None) -> Tensor");
  // the family pairs
  m.def(
      "topk_encode_(Tensor a, Tensor(b!)? b, int k, float scale=1.0, Tensor(t!)? threshold=None, "
      "ScalarType? value_dtype=None, int index_bits=32) -> Tensor");
  m.def(
      "topk_decode_add_(Tensor(a!) h, Tensor gathered, int k, float scale=1.0, Tensor? weights=None, "
      "ScalarType? value_dtype=None, int index_bits=32) -> ()");
  m.def(
      "randk_encode_(Tensor a, Tensor(b!)? b, int k, int seed, int step, int bucket, bool window, "
      "float scale=1.0, int? rank=None) -> Tensor");
  m.def(
      "randk_decode_add_(Tensor(a!) h, Tensor gathered, int k, int seed, int step, int bucket, bool window, "
      "float scale=1.0, Tensor? weights=None) -> ()");
  m.def(
      "quant_encode_(Tensor a, Tensor(b!)? b, str scheme, int levels, int block, bool stochastic, int seed, "
      "int step, int bucket, int rank, float scale=1.0) -> Tensor");
  m.def(
      "quant_decode_add_(Tensor(a!) h, Tensor gathered, str scheme, int levels, int block, float scale=1.0, "
      "Tensor? weights=None) -> ()");
  m.def("dense_encode_(Tensor a, Tensor(b!)? b, float? clip=None, float scale=1.0) -> Tensor");
  m.def("dense_decode_add_(Tensor(a!) h, Tensor gathered, float scale=1.0, Tensor? weights=None) -> ()");
  m.def("chunktopk_encode_(Tensor a, Tensor(b!)? b, int k, int chunk, int bits, float scale=1.0) -> Tensor");
  m.def(
      "chunktopk_decode_add_(Tensor(a!) h, Tensor gathered, int k, int chunk, int bits, float scale=1.0, "
      "Tensor? weights=None) -> ()");
  // sizes: the one function Python asks
  m.def(
      "message_nbytes(str family, int numel, ScalarType dtype, int k=0, str scheme=\"\", int levels=0, "
      "int block=0, int bits=0) -> int",
      &efcomm::message_nbytes);
  // method ops
  m.def("motef_track_(Tensor g, Tensor(a!) M, Tensor(b!) V, Tensor G, Tensor G_mean, float lam, float gamma) -> ()");
  m.def("lazy_trigger(Tensor g, Tensor h_local, Tensor y, float zeta) -> Tensor");
  m.def("adacgd_choose(Tensor g, Tensor h_local, Tensor y, int[] ks, float zeta) -> Tensor");
}
