// Hopper (sm_90a) GEMMs from CUTLASS 3.x collectives: TMA loads into a multistage smem ring,
// wgmma (HGMMA) with fp32 accumulators in registers, warp-specialized producer/consumers, and a
// TMA-store epilogue built from an epilogue visitor tree. Problem modes may be nested (CuTe's
// GETT): a TMA descriptor spans up to five tensor dims, so heads, q/k/v and batch are just
// modes of the operands and of the output, and no gather or scatter copy exists.
#pragma once
#include "cutlass_common.cuh"
#include "gelu.cuh"
#include "gemm_problems.cuh"

#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/callbacks.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace fastgpt::gemm::sm90 {

using namespace cute;

// A per-column (N) vector broadcast over rows, for an N mode that may be nested: element n of
// the vector sits at the offset of n in the compact column-major layout of N's shape, which for
// N = (D, H, 3) is d + D*h + C*s, the order of nanoGPT's c_attn bias. CUTLASS's Sm90RowBroadcast
// is this node for a flat N; this one stages the CTA's slice into shared memory through the
// tile's coordinate tensor, so a nested tile is fine. A null pointer broadcasts zero.
template <class CtaTileShapeMNK, class Element>
struct NestedRowBroadcast {
  static constexpr int kTileN = size<1>(CtaTileShapeMNK{});
  struct SharedStorage {
    array_aligned<Element, kTileN> smem;
  };
  struct Arguments {
    Element const* ptr = nullptr;
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const&) {
    return true;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  CUTLASS_HOST_DEVICE NestedRowBroadcast() {}
  CUTLASS_HOST_DEVICE NestedRowBroadcast(Params const& params, SharedStorage const& shared)
      : params(params), smem(const_cast<Element*>(shared.smem.data())) {}

  Params params;
  Element* smem = nullptr;

  CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_C_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_zero() const { return false; }

  template <class... Args>
  CUTLASS_DEVICE auto get_producer_load_callbacks(cutlass::epilogue::fusion::ProducerLoadArgs<Args...> const&) {
    return cutlass::epilogue::fusion::EmptyProducerLoadCallbacks{};
  }

  template <class GTensor, class CTensor, class Residue, class SRTensor, class RTensor>
  struct ConsumerStoreCallbacks : cutlass::epilogue::fusion::EmptyConsumerStoreCallbacks {
    CUTLASS_DEVICE ConsumerStoreCallbacks(GTensor gRow, CTensor cRow, Residue residue, SRTensor tSR_sRow,
                                          RTensor tSR_rRow, Element const* ptr, Element* smem, int thread_idx,
                                          int thread_count)
        : gRow(gRow), cRow(cRow), residue(residue), tSR_sRow(tSR_sRow), tSR_rRow(tSR_rRow), ptr(ptr), smem(smem),
          thread_idx(thread_idx), thread_count(thread_count) {}

    GTensor gRow;        // (CTA_N) the tile's slice of the vector, nested N
    CTensor cRow;        // (CTA_N) -> tile-relative (m, n) coordinates, n nested
    Residue residue;     // (m, n) extents left from the tile's origin
    SRTensor tSR_sRow;   // (CPY,CPY_M,CPY_N,EPI_M,EPI_N) smem view this thread reads
    RTensor tSR_rRow;    // (CPY,CPY_M,CPY_N) its registers
    Element const* ptr;
    Element* smem;
    int thread_idx, thread_count;

    CUTLASS_DEVICE void begin() {
      for (int j = thread_idx; j < kTileN; j += thread_count)
        smem[j] = (ptr != nullptr && elem_less(cRow(j), residue)) ? gRow(j) : Element(0);
    }
    CUTLASS_DEVICE bool begin_sync_needed() const { return true; }

    CUTLASS_DEVICE void begin_loop(int epi_m, int epi_n) {
      if (epi_m == 0) {  // the subtile loop runs M fastest: load this N slice once
        Tensor src = filter_zeros(tSR_sRow(_, _, _, epi_m, epi_n));
        Tensor dst = filter_zeros(tSR_rRow);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(src); ++i) dst(i) = float(src(i));
      }
    }

    template <typename ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE cutlass::Array<float, FragmentSize> visit(cutlass::Array<ElementAccumulator, FragmentSize> const&,
                                                            int epi_v, int, int) {
      cutlass::Array<float, FragmentSize> out;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; ++i) out[i] = tSR_rRow(epi_v * FragmentSize + i);
      return out;
    }
  };

  // The vector's slice for CTA tile (m, n) as a (CTA_N) tensor, N nested like the tile: the
  // vector seen as an (M, N) tensor (stride 0 along M, compact column-major along N), tiled.
  // Shared with the host-side probe (qkv_bias_plan_sm90).
  template <class ProblemShapeMNKL, class TileShapeMNK, class CoordM, class CoordN>
  CUTE_HOST_DEVICE static auto slice(Element const* ptr, ProblemShapeMNKL const& problem, TileShapeMNK const& tile,
                                     CoordM const& m, CoordN const& n) {
    auto [M, N, K, L] = problem;
    Tensor mRow = make_tensor(make_gmem_ptr(ptr), make_layout(make_layout(M, repeat_like(M, _0{})), make_layout(N)));
    return local_tile(mRow, take<0, 2>(tile), make_coord(m, n))(_0{}, _);
  }

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(cutlass::epilogue::fusion::ConsumerStoreArgs<Args...> const& args) {
    auto [m, n, k, l] = args.tile_coord_mnkl;
    Tensor gRow = slice(params.ptr, args.problem_shape_mnkl, args.tile_shape_mnk, m, n);  // (CTA_N)
    Tensor cRow = args.cD(_0{}, _);                                                      // (CTA_N)
    auto residue = args.residue_cD;
    // The tile's slice in smem, shaped like the CTA tile (nested modes included) so that the
    // epilogue's partitioning applies to it as it does to the output tile.
    Tensor sRow = make_tensor(make_smem_ptr(smem), make_layout(make_layout(shape<0>(CtaTileShapeMNK{}), _0{}),
                                                               make_layout(shape<1>(CtaTileShapeMNK{}))));
    Tensor tSR_sRow = cutlass::epilogue::fusion::sm90_partition_for_epilogue<ReferenceSrc>(
        sRow, args.epi_tile, args.tiled_copy, args.thread_idx);
    Tensor tSR_rRow = make_tensor_like<float>(take<0, 3>(tSR_sRow));
    return ConsumerStoreCallbacks<decltype(gRow), decltype(cRow), decltype(residue), decltype(tSR_sRow),
                                  decltype(tSR_rRow)>(gRow, cRow, residue, tSR_sRow, tSR_rRow, params.ptr, smem,
                                                      args.thread_idx, int(size(args.tiled_copy)));
  }
};

// D = acc + bias[n] with the nested-N bias above.
template <class CtaTileShapeMNK, class Element>
using AccPlusNestedBias = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, Element, float, cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90AccFetch, NestedRowBroadcast<CtaTileShapeMNK, Element>>;

// A TMA warp-specialized GEMM with fp32 accumulation for one of gemm_problems.cuh's problems.
// Cooperative schedule: both consumer warpgroups share a CTA tile (64 rows each), the epilogue
// follows the mainloop. (The Pingpong schedule, one warpgroup per tile, spills a few registers
// at 128 x 128 tiles with nvcc 13, so it is not used.) Fusion: the epilogue visitor tree or
// fusion operation. EpilogueTile: the subtile the epilogue stores per TMA box, given per nested
// mode like the CTA tile (its M must be 128 for this schedule).
template <class Element, class Problem, class TileShape, class EpilogueTile, class Fusion>
struct Gemm {
  using ProblemShape = typename Problem::ProblemShape;
  using StrideA = typename Problem::StrideA;
  using StrideB = typename Problem::StrideB;
  using StrideD = typename Problem::StrideD;
  using ClusterShape = Shape<_1, _1, _1>;
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape, EpilogueTile, float, float, void,
      StrideD, kAlign, Element, StrideD, kAlign, cutlass::epilogue::TmaWarpSpecializedCooperative,
      Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, StrideA, kAlign, Element, StrideB, kAlign, float,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Arguments = typename Kernel::Arguments;
  using Params = typename Kernel::Params;

  // Arguments for problem p with the epilogue's fusion arguments left default (the caller sets
  // bias and aux pointers there).
  template <class P>
  static Arguments arguments(const P& p, int sm_count, const void* a, const void* b, void* d) {
    Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = Problem::shape(p);
    args.mainloop.ptr_A = static_cast<const Element*>(a);
    args.mainloop.dA = Problem::stride_a(p);
    args.mainloop.ptr_B = static_cast<const Element*>(b);
    args.mainloop.dB = Problem::stride_b(p);
    args.epilogue.ptr_C = nullptr;
    args.epilogue.dC = Problem::stride_d(p);
    args.epilogue.ptr_D = static_cast<Element*>(d);
    args.epilogue.dD = Problem::stride_d(p);
    args.hw_info.device_id = 0;  // only used to query sm_count, which is given
    args.hw_info.sm_count = sm_count;
    return args;
  }

  static Params params(Arguments const& args) {
    if (Kernel::get_workspace_size(args) != 0) throw std::runtime_error("fastgpt sm90 GEMM: unexpected workspace");
    if (!Kernel::can_implement(args)) throw std::runtime_error("fastgpt sm90 GEMM: CUTLASS cannot implement this problem");
    reset_tma_encode_result();
    Params params = Kernel::to_underlying_arguments(args, nullptr);
    if (last_tma_encode_result() != CUDA_SUCCESS)
      throw std::runtime_error("fastgpt sm90 GEMM: the driver refused a TMA descriptor (CUresult " +
                               std::to_string(int(last_tma_encode_result())) + ")");
    return params;
  }

  template <class Tag>
  static void launch(Params const& params, cudaStream_t stream) {
    auto kernel = fastgpt_gemm_kernel<Kernel, Tag, 90>;
    const int smem = Kernel::SharedStorageSize;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
               "cudaFuncSetAttribute");
    kernel<<<Kernel::get_grid_shape(params), Kernel::get_block_shape(), smem, stream>>>(params);
    check_cuda(cudaGetLastError(), Tag::name);
  }

  template <class Tag>
  static KernelPlan plan(Params const& params) {
    KernelPlan plan;
    plan.name = Tag::name;
    const dim3 grid = Kernel::get_grid_shape(params);
    plan.grid[0] = grid.x, plan.grid[1] = grid.y, plan.grid[2] = grid.z;
    plan.block = Kernel::get_block_shape().x;
    plan.smem = Kernel::SharedStorageSize;
    return plan;
  }
};

// What the launcher of Kind would run for p, its TMA descriptors recorded rather than encoded
// (no GPU needed), with fake_pointers().
template <class Kind, class P>
KernelPlan plan_kind(const P& p) {
  std::vector<TmaRecord> tma;
  KernelPlan plan;
  {
    TmaRecorder recorder(&tma);
    if (p.dtype == DType::f16) {
      using G = typename Kind::template Gemm<cutlass::half_t>;
      plan = G::template plan<typename Kind::TagF16>(Kind::template params<cutlass::half_t>(p, 132, fake_pointers()));
    } else {
      using G = typename Kind::template Gemm<cutlass::bfloat16_t>;
      plan = G::template plan<typename Kind::TagBF16>(
          Kind::template params<cutlass::bfloat16_t>(p, 132, fake_pointers()));
    }
  }
  plan.tma = std::move(tma);
  return plan;
}

// GELU forms (gelu.cuh) for the epilogue's activation node, which applies them to fragments.
template <class Fn, class T>
struct ApplyFn {
  CUTLASS_HOST_DEVICE T operator()(T const& x) const { return T(Fn{}(float(x))); }
};
template <class Fn, class T, int N>
struct ApplyFn<Fn, cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& x) const {
    cutlass::Array<T, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = T(Fn{}(float(x[i])));
    return y;
  }
};
template <class T>
using GeluErfFn = ApplyFn<GeluErf, T>;
template <class T>
using GeluTanhFn = ApplyFn<GeluTanh, T>;

}  // namespace fastgpt::gemm::sm90
