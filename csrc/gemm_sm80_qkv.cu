// QKV projection GEMMs for Ampere and later non-Hopper GPUs, forward and backward, over the
// head-split layout (problems in gemm_problems.cuh; kernel in gemm_sm80.cuh). A nested
// (D, H, 3) mode is tiled 64 head-dim elements x 2 heads, its K mode 32 x 1 x 1; a nested
// (T, B) K mode 32 time steps.
#include "gemm_families.h"
#include "gemm_sm80.cuh"

namespace fastgpt::gemm::sm80 {
namespace {

using HeadTile = Shape<_64, _2, _1>;

FASTGPT_KERNEL_TAG(qkv_fwd_sm80_f16);
FASTGPT_KERNEL_TAG(qkv_fwd_sm80_bf16);
FASTGPT_KERNEL_TAG(qkv_dx_sm80_f16);
FASTGPT_KERNEL_TAG(qkv_dx_sm80_bf16);
FASTGPT_KERNEL_TAG(qkv_dw_sm80_f16);
FASTGPT_KERNEL_TAG(qkv_dw_sm80_bf16);

template <class Problem, class Tile, class F16, class BF16>
struct Kind {
  template <class E>
  using Gemm = sm80::Gemm<E, Problem, Tile>;
  using TagF16 = F16;
  using TagBF16 = BF16;
  template <class E>
  static typename Gemm<E>::Params params(const QkvProblem& p, int, const GemmPointers& ptr) {
    return Gemm<E>::params(p, ptr.a, ptr.b, ptr.d, ptr.bias);
  }
};
using Fwd = Kind<QkvFwdProblem, Shape<_128, HeadTile, _32>, qkv_fwd_sm80_f16, qkv_fwd_sm80_bf16>;
using Dx = Kind<QkvDxProblem, Shape<_128, _128, Shape<_32, _1, _1>>, qkv_dx_sm80_f16, qkv_dx_sm80_bf16>;
using Dw = Kind<QkvDwProblem, Shape<HeadTile, _128, Shape<_32, _1>>, qkv_dw_sm80_f16, qkv_dw_sm80_bf16>;

}  // namespace

void qkv_forward(const QkvProblem& p, const void* x, const void* w, const void* bias, void* out,
                 cudaStream_t stream) {
  launch_kind<Fwd>(p, 0, {x, w, out, bias}, stream);
}
void qkv_backward_dx(const QkvProblem& p, const void* grad, const void* w, void* dx, cudaStream_t stream) {
  launch_kind<Dx>(p, 0, {grad, w, dx}, stream);
}
void qkv_backward_dw(const QkvProblem& p, const void* grad, const void* x, void* dw, cudaStream_t stream) {
  launch_kind<Dw>(p, 0, {grad, x, dw}, stream);
}

std::string device_code_missing() {
  return kernel_code_missing(fastgpt_gemm_kernel<Fwd::Gemm<cutlass::bfloat16_t>, qkv_fwd_sm80_bf16, 80>, 80);
}

std::vector<std::string> qkv_kernel_names() {
  return {qkv_fwd_sm80_f16::name, qkv_fwd_sm80_bf16::name, qkv_dx_sm80_f16::name,
          qkv_dx_sm80_bf16::name, qkv_dw_sm80_f16::name,  qkv_dw_sm80_bf16::name};
}

}  // namespace fastgpt::gemm::sm80

namespace fastgpt::gemm {
Sm80Trace qkv_trace_sm80(const QkvProblem& p, const std::string& kind, const std::vector<int>& ctas, bool k_edges) {
  if (kind == "qkv_fwd") return sm80::trace_kind<sm80::Fwd>(p, ctas, k_edges);
  if (kind == "qkv_dx") return sm80::trace_kind<sm80::Dx>(p, ctas, k_edges);
  if (kind == "qkv_dw") return sm80::trace_kind<sm80::Dw>(p, ctas, k_edges);
  throw std::invalid_argument("qkv_trace_sm80: unknown kind '" + kind + "'");
}
}  // namespace fastgpt::gemm
