// QKV projection GEMMs for Hopper (sm_90a), forward and backward, as GETTs over the head-split
// layout (problems in gemm_problems.cuh). Every operand is read, and the output written, in
// place through TMA descriptors of up to five dims; out-of-range rows, heads and time steps
// are TMA's: loads fill zeros, stores are clipped.
// CTA tiles 128 x 128 x 64, where a nested (D, H, 3) mode takes 64 head-dim elements x 2 heads
// and a nested (T, B) K mode 64 time steps; epilogue subtiles 128 x 32.
#include "gemm_families.h"
#include "gemm_sm90.cuh"

namespace fastgpt::gemm::sm90 {
namespace {

using HeadTile = Shape<_64, _2, _1>;
template <class Element>
using PlainEpilogue = cutlass::epilogue::fusion::LinearCombination<Element, float, void, float>;

FASTGPT_KERNEL_TAG(qkv_fwd_sm90_f16);
FASTGPT_KERNEL_TAG(qkv_fwd_sm90_bf16);
FASTGPT_KERNEL_TAG(qkv_dx_sm90_f16);
FASTGPT_KERNEL_TAG(qkv_dx_sm90_bf16);
FASTGPT_KERNEL_TAG(qkv_dw_sm90_f16);
FASTGPT_KERNEL_TAG(qkv_dw_sm90_bf16);

struct Fwd {  // out = x W^T + bias, as heads
  using Tile = Shape<_128, HeadTile, _64>;
  template <class E>
  using Gemm = sm90::Gemm<E, QkvFwdProblem, Tile, Shape<_128, Shape<_32, _1, _1>>, AccPlusNestedBias<Tile, E>>;
  using TagF16 = qkv_fwd_sm90_f16;
  using TagBF16 = qkv_fwd_sm90_bf16;
  template <class E>
  static typename Gemm<E>::Params params(const QkvProblem& p, int sm_count, const GemmPointers& ptr) {
    auto args = Gemm<E>::arguments(p, sm_count, ptr.a, ptr.b, ptr.d);
    args.epilogue.thread.op_1.ptr = static_cast<const E*>(ptr.bias);  // the bias leaf of acc + bias
    return Gemm<E>::params(args);
  }
};

struct Dx {  // dx = grad W
  template <class E>
  using Gemm = sm90::Gemm<E, QkvDxProblem, Shape<_128, _128, Shape<_64, _1, _1>>, Shape<_128, _32>, PlainEpilogue<E>>;
  using TagF16 = qkv_dx_sm90_f16;
  using TagBF16 = qkv_dx_sm90_bf16;
  template <class E>
  static typename Gemm<E>::Params params(const QkvProblem& p, int sm_count, const GemmPointers& ptr) {
    return Gemm<E>::params(Gemm<E>::arguments(p, sm_count, ptr.a, ptr.b, ptr.d));
  }
};

struct Dw {  // dW = grad^T x
  template <class E>
  using Gemm = sm90::Gemm<E, QkvDwProblem, Shape<HeadTile, _128, Shape<_64, _1>>, Shape<HeadTile, _32>, PlainEpilogue<E>>;
  using TagF16 = qkv_dw_sm90_f16;
  using TagBF16 = qkv_dw_sm90_bf16;
  template <class E>
  static typename Gemm<E>::Params params(const QkvProblem& p, int sm_count, const GemmPointers& ptr) {
    return Gemm<E>::params(Gemm<E>::arguments(p, sm_count, ptr.a, ptr.b, ptr.d));
  }
};

}  // namespace

void qkv_forward(const QkvProblem& p, int sm_count, const void* x, const void* w, const void* bias, void* out,
                 cudaStream_t stream) {
  launch_kind<Fwd>(p, sm_count, {x, w, out, bias}, stream);
}
void qkv_backward_dx(const QkvProblem& p, int sm_count, const void* grad, const void* w, void* dx,
                     cudaStream_t stream) {
  launch_kind<Dx>(p, sm_count, {grad, w, dx}, stream);
}
void qkv_backward_dw(const QkvProblem& p, int sm_count, const void* grad, const void* x, void* dw,
                     cudaStream_t stream) {
  launch_kind<Dw>(p, sm_count, {grad, x, dw}, stream);
}

KernelPlan qkv_plan(const QkvProblem& p, const std::string& kind) {
  if (kind == "qkv_fwd") return plan_kind<Fwd>(p);
  if (kind == "qkv_dx") return plan_kind<Dx>(p);
  if (kind == "qkv_dw") return plan_kind<Dw>(p);
  throw std::invalid_argument("qkv_plan: unknown kind '" + kind + "'");
}

std::string device_code_missing() {
  return kernel_code_missing(fastgpt_gemm_kernel<Fwd::Gemm<cutlass::bfloat16_t>::Kernel, qkv_fwd_sm90_bf16, 90>, 90);
}

// The forward's bias node on the host: for every N tile and each of its columns j, whether the
// column exists, the bias element the node loads for it, and the output column the epilogue
// stores there. The tile-relative coordinates and residue are built as the TMA epilogue
// builds them (sm90_epilogue_tma_warpspecialized.hpp: cD, residue_cD), the slice by the node itself.
std::vector<int64_t> qkv_bias_plan(const QkvProblem& p) {
  using Node = NestedRowBroadcast<Fwd::Tile, cutlass::bfloat16_t>;
  const auto problem = QkvFwdProblem::shape(p);
  auto [M, N, K, L] = problem;
  const auto base = reinterpret_cast<const cutlass::bfloat16_t*>(fake_pointers().bias);
  const auto tiles = ceil_div(N, get<1>(Fwd::Tile{}));
  std::vector<int64_t> rows;
  for (int t = 0; t < size(tiles); ++t) {
    const auto n = idx2crd(t, tiles);
    Tensor cD_mn = local_tile(make_identity_tensor(make_shape(M, N)), take<0, 2>(Fwd::Tile{}), make_coord(0, n));
    Tensor cD = make_coord_tensor(cD_mn.layout());
    const auto residue = make_coord(M, N) - cD_mn(_0{});
    Tensor g = Node::slice(base, problem, Fwd::Tile{}, 0, n);
    for (int j = 0; j < size(g); ++j)
      rows.insert(rows.end(), {t, j, int64_t(elem_less(cD(_0{}, j), residue)), int64_t(&g(j) - base),
                               int64_t(make_layout(N)(get<1>(cD_mn(_0{}, j))))});
  }
  return rows;
}

std::vector<std::string> qkv_kernel_names() {
  return {qkv_fwd_sm90_f16::name, qkv_fwd_sm90_bf16::name, qkv_dx_sm90_f16::name,
          qkv_dx_sm90_bf16::name, qkv_dw_sm90_f16::name,  qkv_dw_sm90_bf16::name};
}

}  // namespace fastgpt::gemm::sm90
