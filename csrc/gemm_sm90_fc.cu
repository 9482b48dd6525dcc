// c_fc with bias and GELU in the epilogue for Hopper (sm_90a): pre = x W^T + bias is stored (the
// backward's input) and y = gelu(pre) computed from it in fp32 before rounding, both through TMA
// stores. CTA tiles 128 x 128 x 64, epilogue subtiles 128 x 32.
#include "gemm_families.h"
#include "gemm_sm90.cuh"

namespace fastgpt::gemm::sm90 {
namespace {

FASTGPT_KERNEL_TAG(fc_gelu_erf_sm90_f16);
FASTGPT_KERNEL_TAG(fc_gelu_erf_sm90_bf16);
FASTGPT_KERNEL_TAG(fc_gelu_tanh_sm90_f16);
FASTGPT_KERNEL_TAG(fc_gelu_tanh_sm90_bf16);

template <template <class> class Act, class F16, class BF16>
struct FcGelu {
  template <class E>
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBiasEltActAux<cutlass::layout::RowMajor, Act, E, float, E, E,
                                                                      E, float>;
  template <class E>
  using Gemm = sm90::Gemm<E, FcProblemLayout, Shape<_128, _128, _64>, Shape<_128, _32>, Fusion<E>>;
  using TagF16 = F16;
  using TagBF16 = BF16;
  template <class E>
  static typename Gemm<E>::Params params(const FcProblem& p, int sm_count, const GemmPointers& ptr) {
    auto args = Gemm<E>::arguments(p, sm_count, ptr.a, ptr.b, ptr.d);
    args.epilogue.thread.bias_ptr = static_cast<const E*>(ptr.bias);
    args.epilogue.thread.aux_ptr = static_cast<E*>(ptr.aux);
    args.epilogue.thread.dAux = {int64_t(p.N), _1{}, p.M * p.N};
    return Gemm<E>::params(args);
  }
};
using FcErf = FcGelu<GeluErfFn, fc_gelu_erf_sm90_f16, fc_gelu_erf_sm90_bf16>;
using FcTanh = FcGelu<GeluTanhFn, fc_gelu_tanh_sm90_f16, fc_gelu_tanh_sm90_bf16>;

}  // namespace

void fc_forward(const FcProblem& p, int sm_count, const void* x, const void* w, const void* bias, void* y, void* pre,
                cudaStream_t stream) {
  const GemmPointers ptr{x, w, y, bias, pre};
  if (p.gelu == Gelu::erf)
    launch_kind<FcErf>(p, sm_count, ptr, stream);
  else
    launch_kind<FcTanh>(p, sm_count, ptr, stream);
}

KernelPlan fc_plan(const FcProblem& p) { return p.gelu == Gelu::erf ? plan_kind<FcErf>(p) : plan_kind<FcTanh>(p); }

std::vector<std::string> fc_kernel_names() {
  return {fc_gelu_erf_sm90_f16::name, fc_gelu_erf_sm90_bf16::name, fc_gelu_tanh_sm90_f16::name,
          fc_gelu_tanh_sm90_bf16::name};
}

}  // namespace fastgpt::gemm::sm90
