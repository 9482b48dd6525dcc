// c_fc with bias and GELU in the epilogue for Ampere and later non-Hopper GPUs (kernel in
// gemm_sm80.cuh): pre = x W^T + bias stored for the backward, y = gelu(pre) from the fp32 value.
#include "gemm_families.h"
#include "gemm_sm80.cuh"

namespace fastgpt::gemm::sm80 {
namespace {

FASTGPT_KERNEL_TAG(fc_gelu_erf_sm80_f16);
FASTGPT_KERNEL_TAG(fc_gelu_erf_sm80_bf16);
FASTGPT_KERNEL_TAG(fc_gelu_tanh_sm80_f16);
FASTGPT_KERNEL_TAG(fc_gelu_tanh_sm80_bf16);

template <class Act, class F16, class BF16>
struct FcGelu {
  template <class E>
  using Gemm = sm80::Gemm<E, FcProblemLayout, Shape<_128, _128, _32>, Act, kEpiActAux>;
  using TagF16 = F16;
  using TagBF16 = BF16;
  template <class E>
  static typename Gemm<E>::Params params(const FcProblem& p, int, const GemmPointers& ptr) {
    return Gemm<E>::params(p, ptr.a, ptr.b, ptr.d, ptr.bias, ptr.aux);
  }
};
using FcErf = FcGelu<GeluErf, fc_gelu_erf_sm80_f16, fc_gelu_erf_sm80_bf16>;
using FcTanh = FcGelu<GeluTanh, fc_gelu_tanh_sm80_f16, fc_gelu_tanh_sm80_bf16>;

// The MLP backward's dGELU behind c_proj's dx GEMM (gemm.h: fc_dgelu): dpre = acc * gelu'(pre),
// pre read in the epilogue.
FASTGPT_KERNEL_TAG(fc_dgelu_erf_sm80_f16);
FASTGPT_KERNEL_TAG(fc_dgelu_erf_sm80_bf16);
FASTGPT_KERNEL_TAG(fc_dgelu_tanh_sm80_f16);
FASTGPT_KERNEL_TAG(fc_dgelu_tanh_sm80_bf16);

template <class Act, class F16, class BF16>
struct FcDgelu {
  template <class E>
  using Gemm = sm80::Gemm<E, FcDgeluProblemLayout, Shape<_128, _128, _32>, Act, kEpiDAct>;
  using TagF16 = F16;
  using TagBF16 = BF16;
  template <class E>
  static typename Gemm<E>::Params params(const FcProblem& p, int, const GemmPointers& ptr) {
    return Gemm<E>::params(p, ptr.a, ptr.b, ptr.d, nullptr, ptr.aux);
  }
};
using DgeluErf = FcDgelu<GeluErf, fc_dgelu_erf_sm80_f16, fc_dgelu_erf_sm80_bf16>;
using DgeluTanh = FcDgelu<GeluTanh, fc_dgelu_tanh_sm80_f16, fc_dgelu_tanh_sm80_bf16>;

}  // namespace

void fc_forward(const FcProblem& p, const void* x, const void* w, const void* bias, void* y, void* pre,
                cudaStream_t stream) {
  const GemmPointers ptr{x, w, y, bias, pre};
  if (p.gelu == Gelu::erf)
    launch_kind<FcErf>(p, 0, ptr, stream);
  else
    launch_kind<FcTanh>(p, 0, ptr, stream);
}

std::vector<std::string> fc_kernel_names() {
  return {fc_gelu_erf_sm80_f16::name, fc_gelu_erf_sm80_bf16::name, fc_gelu_tanh_sm80_f16::name,
          fc_gelu_tanh_sm80_bf16::name};
}

void fc_dgelu(const FcProblem& p, const void* grad, const void* w_proj, const void* pre, void* dpre,
              cudaStream_t stream) {
  const GemmPointers ptr{grad, w_proj, dpre, nullptr, const_cast<void*>(pre)};
  if (p.gelu == Gelu::erf)
    launch_kind<DgeluErf>(p, 0, ptr, stream);
  else
    launch_kind<DgeluTanh>(p, 0, ptr, stream);
}

std::vector<std::string> fc_dgelu_kernel_names() {
  return {fc_dgelu_erf_sm80_f16::name, fc_dgelu_erf_sm80_bf16::name, fc_dgelu_tanh_sm80_f16::name,
          fc_dgelu_tanh_sm80_bf16::name};
}

}  // namespace fastgpt::gemm::sm80

namespace fastgpt::gemm {
Sm80Trace fc_trace_sm80(const FcProblem& p, const std::vector<int>& ctas, bool k_edges) {
  return p.gelu == Gelu::erf ? sm80::trace_kind<sm80::FcErf>(p, ctas, k_edges) : sm80::trace_kind<sm80::FcTanh>(p, ctas, k_edges);
}
Sm80Trace fc_dgelu_trace_sm80(const FcProblem& p, const std::vector<int>& ctas, bool k_edges) {
  return p.gelu == Gelu::erf ? sm80::trace_kind<sm80::DgeluErf>(p, ctas, k_edges)
                             : sm80::trace_kind<sm80::DgeluTanh>(p, ctas, k_edges);
}
}  // namespace fastgpt::gemm
