// Every op of the efcomm namespace, declared once. In-place arguments are marked (a!)
// and the op name ends in `_`. Implementations: cpu_ops.cpp (the reference) and
// cuda_ops.cpp.
#include <torch/library.h>

#include "csrc/message_layout.h"

TORCH_LIBRARY(efcomm, m) {
  m.def("topk(Tensor x, int k, Tensor(t!)? threshold=None) -> (Tensor values, Tensor indices)");
  m.def("topk_encode(Tensor x, int k, Tensor(t!)? threshold=None) -> Tensor");
  m.def("ef_topk_encode_(Tensor g, Tensor(a!) e, int k, Tensor(t!)? threshold=None) -> Tensor");
  m.def("ef21_topk_encode_(Tensor g, Tensor(a!) h_local, int k, Tensor(t!)? threshold=None) -> Tensor");
  m.def("ef21_sgdm_topk_encode_(Tensor g, Tensor(a!) v, Tensor(b!) h_local, int k, float eta, Tensor(t!)? threshold=None) -> Tensor");
  m.def("econtrol_topk_encode_(Tensor g, Tensor(a!) e, Tensor(b!) h_local, int k, float eta, Tensor(t!)? threshold=None) -> Tensor");
  m.def("topk_decode_add_(Tensor(a!) h, Tensor gathered, int k, float[]? weights=None) -> ()");
  m.def("clip21_encode_(Tensor g, Tensor(a!) h_local, float tau) -> Tensor");
  m.def("dense_decode_add_(Tensor(a!) h, Tensor gathered, int? world_size=None) -> ()");
  m.def("lag_encode_(Tensor g, Tensor(a!) h_local) -> Tensor");
  m.def("motef_track_(Tensor g, Tensor(a!) M, Tensor(b!) V, Tensor G, Tensor G_mean, float lam, float gamma) -> ()");
  m.def("lazy_trigger(Tensor g, Tensor h_local, Tensor y, float zeta) -> Tensor");
  m.def("adacgd_choose(Tensor g, Tensor h_local, Tensor y, int[] ks, float zeta) -> Tensor");
  m.def("quantize(Tensor x, str scheme, int levels, int block, bool stochastic, int seed, int step, int bucket, int rank) -> Tensor");
  m.def("ef21_quantize_(Tensor g, Tensor(a!) h_local, str scheme, int levels, int block, bool stochastic, int seed, int step, int bucket, int rank) -> Tensor");
  m.def("quant_decode_add_(Tensor(a!) h, Tensor gathered, str scheme, int levels, int block, float scale=1.0, float[]? weights=None) -> ()");
  m.def("quant_message_nbytes(int numel, str scheme, int levels, int block) -> int", &efcomm::quant_message_nbytes);
  m.def("randk_indices(Tensor x, int k, int seed, int step, int bucket, bool window) -> Tensor");
  m.def("randk_encode(Tensor x, int k, int seed, int step, int bucket, bool window) -> Tensor");
  m.def("randk_decode_add_(Tensor(a!) h, Tensor gathered, int k, int seed, int step, int bucket, bool window, float scale=1.0, float[]? weights=None) -> ()");
  m.def("topk_message_nbytes(int k, ScalarType dtype) -> int", &efcomm::topk_message_nbytes);
}
