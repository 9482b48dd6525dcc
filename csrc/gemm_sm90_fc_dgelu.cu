// The MLP backward's dGELU in the epilogue of c_proj's dx GEMM, for Hopper (sm_90a):
//   dpre(m, n) = gelu'(pre(m, n)) * sum_k grad(m, k) w_proj(k, n)
// pre comes in through the epilogue's TMA load pipeline (an aux input, as C would), the dGELU is
// applied to the fp32 accumulators, and dpre goes out through a TMA store: the product
// grad @ w_proj is never written. (The c_fc bias gradient is a column-sum pass over dpre by the
// caller: CUTLASS 4.2's row-reduction node, tried here, keeps 496 bytes of its fragments in
// local memory in this kernel, which the SASS tests refuse.)
// w_proj (nanoGPT's c_proj.weight, (C, 4C)) is the N-major B operand: TMA loads it as stored,
// wgmma reads it transposed from shared memory. CTA tiles 128 x 128 x 64, epilogue subtiles
// 128 x 32, cooperative schedule (like the forward, gemm_sm90_fc.cu).
#include "gemm_families.h"
#include "gemm_sm90.cuh"

#include <cutlass/epilogue/fusion/operations.hpp>

namespace fastgpt::gemm::sm90 {

// dy * gelu'(z) in fp32 (gelu.cuh), for the epilogue's binary compute node.
template <class Fn, class T>
struct ApplyDFn {
  CUTLASS_HOST_DEVICE T operator()(T const& dy, T const& z) const { return T(float(dy) * Fn::grad(float(z))); }
};
template <class Fn, class T, int N>
struct ApplyDFn<Fn, cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& dy,
                                                      cutlass::Array<T, N> const& z) const {
    cutlass::Array<T, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = T(float(dy[i]) * Fn::grad(float(z[i])));
    return out;
  }
};
template <class T>
using DGeluErfFn = ApplyDFn<GeluErf, T>;
template <class T>
using DGeluTanhFn = ApplyDFn<GeluTanh, T>;

// The fusion operation: D = dact(acc, aux). It carries LinCombDeEltAct's traits (aux input,
// row-major), so CUTLASS's epilogue builder derives the aux load's shared-memory layout and copy
// atom as for its own dGELU epilogues; its callbacks (below) are LinCombDeEltAct's without the
// alpha/beta linear combination (no C operand).
template <template <class> class DAct, class Element>
struct DActAux
    : cutlass::epilogue::fusion::LinCombDeEltAct<cutlass::layout::RowMajor, DAct, Element, float, Element> {};

// Its callbacks: dact(acc, aux), rounded to Element by the node.
template <template <class> class DAct, class Element, int StagesC, class EpilogueTile, class SmemLayoutAtom,
          class CopyOpS2R>
using DActAuxCallbacks = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<DAct, Element, float, cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90AccFetch,
    cutlass::epilogue::fusion::Sm90AuxLoad<StagesC, EpilogueTile, Element,
                                           cutlass::gemm::TagToStrideC_t<cutlass::layout::RowMajor>, SmemLayoutAtom,
                                           CopyOpS2R, 128 / cutlass::sizeof_bits<Element>::value>>;

}  // namespace fastgpt::gemm::sm90

namespace cutlass::epilogue::fusion {

template <int StagesC, int StagesD, int FragmentSize, bool ReuseSmemC, bool DelayTmaStore,
          template <class> class DAct, class Element, class CtaTileShapeMNK, class EpilogueTile, class SmemLayoutAtom,
          class CopyOpS2R>
struct FusionCallbacks<epilogue::Sm90TmaWarpSpecialized<StagesC, StagesD, FragmentSize, ReuseSmemC, DelayTmaStore>,
                       fastgpt::gemm::sm90::DActAux<DAct, Element>, CtaTileShapeMNK, EpilogueTile, SmemLayoutAtom,
                       CopyOpS2R>
    : fastgpt::gemm::sm90::DActAuxCallbacks<DAct, Element, StagesC, EpilogueTile, SmemLayoutAtom, CopyOpS2R> {
  using Impl = fastgpt::gemm::sm90::DActAuxCallbacks<DAct, Element, StagesC, EpilogueTile, SmemLayoutAtom, CopyOpS2R>;
  using Operation = fastgpt::gemm::sm90::DActAux<DAct, Element>;
  using StrideAux = cutlass::gemm::TagToStrideC_t<layout::RowMajor>;

  struct Arguments {
    Element const* aux_ptr = nullptr;  // pre (M, N)
    StrideAux dAux = {};

    operator typename Impl::Arguments() const {
      return {{}, {aux_ptr, Element(0), dAux}, {}};  // acc, aux, dact
    }
  };

  using Impl::Impl;
};

}  // namespace cutlass::epilogue::fusion

namespace fastgpt::gemm::sm90 {
namespace {

FASTGPT_KERNEL_TAG(fc_dgelu_erf_sm90_f16);
FASTGPT_KERNEL_TAG(fc_dgelu_erf_sm90_bf16);
FASTGPT_KERNEL_TAG(fc_dgelu_tanh_sm90_f16);
FASTGPT_KERNEL_TAG(fc_dgelu_tanh_sm90_bf16);

template <template <class> class DAct, class F16, class BF16>
struct FcDgelu {
  template <class E>
  using Gemm = sm90::Gemm<E, FcDgeluProblemLayout, Shape<_128, _128, _64>, Shape<_128, _32>, DActAux<DAct, E>>;
  using TagF16 = F16;
  using TagBF16 = BF16;
  template <class E>
  static typename Gemm<E>::Params params(const FcProblem& p, int sm_count, const GemmPointers& ptr) {
    auto args = Gemm<E>::arguments(p, sm_count, ptr.a, ptr.b, ptr.d);
    args.epilogue.thread.aux_ptr = static_cast<const E*>(ptr.aux);
    args.epilogue.thread.dAux = {int64_t(p.N), _1{}, p.M * p.N};
    return Gemm<E>::params(args);
  }
};
using DgeluErf = FcDgelu<DGeluErfFn, fc_dgelu_erf_sm90_f16, fc_dgelu_erf_sm90_bf16>;
using DgeluTanh = FcDgelu<DGeluTanhFn, fc_dgelu_tanh_sm90_f16, fc_dgelu_tanh_sm90_bf16>;

}  // namespace

void fc_dgelu(const FcProblem& p, int sm_count, const void* grad, const void* w_proj, const void* pre, void* dpre,
              cudaStream_t stream) {
  const GemmPointers ptr{grad, w_proj, dpre, nullptr, const_cast<void*>(pre)};
  if (p.gelu == Gelu::erf)
    launch_kind<DgeluErf>(p, sm_count, ptr, stream);
  else
    launch_kind<DgeluTanh>(p, sm_count, ptr, stream);
}

KernelPlan fc_dgelu_plan(const FcProblem& p) {
  return p.gelu == Gelu::erf ? plan_kind<DgeluErf>(p) : plan_kind<DgeluTanh>(p);
}

std::vector<std::string> fc_dgelu_kernel_names() {
  return {fc_dgelu_erf_sm90_f16::name, fc_dgelu_erf_sm90_bf16::name, fc_dgelu_tanh_sm90_f16::name,
          fc_dgelu_tanh_sm90_bf16::name};
}

}  // namespace fastgpt::gemm::sm90
