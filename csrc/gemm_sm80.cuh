// Ampere-class (sm_80 SASS; compute_80 PTX for GPUs after Hopper) GEMMs from CuTe/CUTLASS atoms:
// the multistage cp.async (LDGSTS) pipeline of CUTLASS's sm80 mainloop, swizzled shared memory
// read with ldmatrix (LDSM) into mma.sync m16n8k16 (HMMA) with fp32 accumulators, and an
// epilogue that adds the bias, applies the activation and stores through the output's layout.
//
// CUTLASS's own sm80 collective predicates rows once and the K residue only in the first
// k-tile, which assumes flat modes. Here the problem modes may be nested (gemm_problems.cuh), so
// every 16-byte vector a thread copies is predicated on its global coordinate, per k-tile
// (elem_less against the problem shape; out-of-range vectors are zero-filled by cp.async), and
// every output element on its own. That needs: the contiguous (stride-1) mode of each operand
// and of the output a multiple of 8 elements long, 16-byte aligned base pointers and strides.
//
// CTA: 128 threads (2 x 2 warps), tile 128 x 128 x 32 (nested modes take 64 x 2), 4 stages of
// (128 + 128) x 32 x 2 B = 16 KiB of shared memory each; grid (M tiles, N tiles, L).
#pragma once
#include "cutlass_common.cuh"
#include "gemm_problems.cuh"

#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/arch/mma_sm80.h>

#include "gelu.cuh"

#include <set>

namespace fastgpt::gemm::sm80 {

using namespace cute;

template <class Element>
using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, SM80_16x8x16_F32F16F16F32_TN,
                                 SM80_16x8x16_F32BF16BF16F32_TN>;

// Shared-memory layout, smem->register copy and gmem->smem copy of one operand: K-major
// (stride-1 K) or MN-major, as CUTLASS configures sm80 16-bit operands for a 32-deep K tile.
template <class Element, bool KMajor>
struct Operand;
template <class Element>
struct Operand<Element, true> {
  using SmemLayoutAtom = decltype(composition(Swizzle<2, 3, 3>{}, Layout<Shape<_8, _32>, Stride<_32, _1>>{}));
  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using GmemTiledCopy = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<uint128_t>, Element>{},
                                                 Layout<Shape<_32, _4>, Stride<_4, _1>>{}, Layout<Shape<_1, _8>>{}));
};
template <class Element>
struct Operand<Element, false> {
  using SmemLayoutAtom = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_64, _8>, Stride<_1, _64>>{}));
  using SmemCopyAtom = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  using GmemTiledCopy = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<uint128_t>, Element>{},
                                                 Layout<Shape<_16, _8>, Stride<_1, _16>>{}, Layout<Shape<_8, _1>>{}));
};

// The epilogue's elementwise part, by mode:
//   kEpiAct     out = act(acc + bias[n])
//   kEpiActAux  the same, and aux = acc + bias[n] (the pre-activation, for a backward)
//   kEpiDAct    out = acc * act'(aux) with aux an input (a backward's dGELU)
// Bias: one value per column, at the offset of n in the compact column-major layout of N's
// (possibly nested) shape; null means none.
constexpr int kEpiAct = 0, kEpiActAux = 1, kEpiDAct = 2;

template <class Element>
struct EpilogueParams {
  Element* d = nullptr;
  Element const* bias = nullptr;
  Element* aux = nullptr;
};

template <class Element, class Problem, class TileShape_, class Act = Identity, int kEpi = kEpiAct>
struct Gemm {
  using ProblemShape = typename Problem::ProblemShape;
  using StrideA = typename Problem::StrideA;
  using StrideB = typename Problem::StrideB;
  using StrideD = typename Problem::StrideD;
  using TileShape = TileShape_;
  static constexpr int BM = size<0>(TileShape{}), BN = size<1>(TileShape{}), BK = size<2>(TileShape{});
  static constexpr int Stages = 4;
  static_assert(BM == 128 && BN == 128 && BK == 32, "the operand configurations assume 128 x 128 x 32 tiles");

  static constexpr bool kAKMajor = is_constant<1, decltype(front(get<1>(StrideA{})))>::value;
  static constexpr bool kBKMajor = is_constant<1, decltype(front(get<1>(StrideB{})))>::value;
  using OperandA = Operand<Element, kAKMajor>;
  using OperandB = Operand<Element, kBKMajor>;
  using SmemLayoutA = decltype(tile_to_shape(typename OperandA::SmemLayoutAtom{},
                                             make_shape(Int<BM>{}, Int<BK>{}, Int<Stages>{})));
  using SmemLayoutB = decltype(tile_to_shape(typename OperandB::SmemLayoutAtom{},
                                             make_shape(Int<BN>{}, Int<BK>{}, Int<Stages>{})));
  using TiledMma = TiledMMA<MMA_Atom<MmaOp<Element>>, Layout<Shape<_2, _2, _1>>, Tile<_32, _32, _16>>;

  static constexpr uint32_t MaxThreadsPerBlock = 128;
  static constexpr uint32_t MinBlocksPerMultiprocessor = 1;

  struct SharedStorage {
    array_aligned<Element, cosize_v<SmemLayoutA>> a;
    array_aligned<Element, cosize_v<SmemLayoutB>> b;
  };
  static constexpr int SharedStorageSize = sizeof(SharedStorage);

  struct Params {
    ProblemShape shape;
    Element const* a;
    StrideA da;
    Element const* b;
    StrideB db;
    StrideD dd;
    EpilogueParams<Element> epi;
  };

  template <class P>
  static Params params(const P& p, const void* a, const void* b, void* d, const void* bias = nullptr,
                       void* aux = nullptr) {
    return {Problem::shape(p),
            static_cast<Element const*>(a),
            Problem::stride_a(p),
            static_cast<Element const*>(b),
            Problem::stride_b(p),
            Problem::stride_d(p),
            {static_cast<Element*>(d), static_cast<Element const*>(bias), static_cast<Element*>(aux)}};
  }

  static dim3 get_grid_shape(Params const& p) {
    return dim3(size(ceil_div(get<0>(p.shape), shape<0>(TileShape{}))),
                size(ceil_div(get<1>(p.shape), shape<1>(TileShape{}))), size<3>(p.shape));
  }
  static dim3 get_block_shape() { return dim3(MaxThreadsPerBlock, 1, 1); }

  // ---- global views of one CTA's work; the kernel and the host probes both use these ----

  // A's (BM, BK, k-tiles) tiles for M block m of batch l, the global (m, k) coordinate of each
  // element, and the (M, K) extent the coordinates are checked against. Likewise B with N.
  CUTE_HOST_DEVICE static auto a_tiles(Params const& p, int m, int l) {
    auto [M, N, K, L] = p.shape;
    Tensor mA = make_tensor(make_gmem_ptr(p.a), make_layout(make_shape(M, K, L), p.da))(_, _, l);
    Tensor cA = make_identity_tensor(make_shape(M, K));
    return make_tuple(local_tile(mA, select<0, 2>(TileShape{}), make_coord(m, _)),
                      local_tile(cA, select<0, 2>(TileShape{}), make_coord(m, _)), make_shape(M, K));
  }
  CUTE_HOST_DEVICE static auto b_tiles(Params const& p, int n, int l) {
    auto [M, N, K, L] = p.shape;
    Tensor mB = make_tensor(make_gmem_ptr(p.b), make_layout(make_shape(N, K, L), p.db))(_, _, l);
    Tensor cB = make_identity_tensor(make_shape(N, K));
    return make_tuple(local_tile(mB, select<1, 2>(TileShape{}), make_coord(n, _)),
                      local_tile(cB, select<1, 2>(TileShape{}), make_coord(n, _)), make_shape(N, K));
  }
  // The output tile (m, n) of batch l as thread tid's accumulator fragment sees it: the output
  // and aux elements, the bias element, and the global (m, n) coordinate of each.
  CUTE_HOST_DEVICE static auto d_fragments(Params const& p, int m, int n, int l, int tid) {
    auto [M, N, K, L] = p.shape;
    auto tiler = select<0, 1>(TileShape{});
    auto coord = make_coord(m, n);
    auto layout_d = make_layout(make_shape(M, N, L), p.dd);
    auto layout_bias = make_layout(make_layout(M, repeat_like(M, _0{})), make_layout(N));
    auto thr = TiledMma{}.get_slice(tid);
    return make_tuple(thr.partition_C(local_tile(make_tensor(make_gmem_ptr(p.epi.d), layout_d)(_, _, l), tiler, coord)),
                      thr.partition_C(local_tile(make_tensor(make_gmem_ptr(p.epi.aux), layout_d)(_, _, l), tiler, coord)),
                      thr.partition_C(local_tile(make_tensor(make_gmem_ptr(p.epi.bias), layout_bias), tiler, coord)),
                      thr.partition_C(local_tile(make_identity_tensor(make_shape(M, N)), tiler, coord)),
                      make_shape(M, N));
  }

  CUTLASS_DEVICE void operator()(Params const& p, char* smem) {
    const int m_blk = blockIdx.x, n_blk = blockIdx.y, l = blockIdx.z, tid = threadIdx.x;
    SharedStorage& storage = *reinterpret_cast<SharedStorage*>(smem);
    Tensor sA = make_tensor(make_smem_ptr(storage.a.data()), SmemLayoutA{});  // (BM, BK, PIPE)
    Tensor sB = make_tensor(make_smem_ptr(storage.b.data()), SmemLayoutB{});  // (BN, BK, PIPE)

    auto [gA, cA, extent_a] = a_tiles(p, m_blk, l);  // (BM, BK, k)
    auto [gB, cB, extent_b] = b_tiles(p, n_blk, l);  // (BN, BK, k)
    typename OperandA::GmemTiledCopy copy_a;
    typename OperandB::GmemTiledCopy copy_b;
    auto thr_copy_a = copy_a.get_slice(tid);
    auto thr_copy_b = copy_b.get_slice(tid);
    Tensor tAgA = thr_copy_a.partition_S(gA);  // (CPY, CPY_M, CPY_K, k)
    Tensor tAcA = thr_copy_a.partition_S(cA);
    Tensor tAsA = thr_copy_a.partition_D(sA);  // (CPY, CPY_M, CPY_K, PIPE)
    Tensor tBgB = thr_copy_b.partition_S(gB);
    Tensor tBcB = thr_copy_b.partition_S(cB);
    Tensor tBsB = thr_copy_b.partition_D(sB);

    // One k-tile into one stage; each vector's first element decides for all eight (see top).
    auto load = [&](auto k_tile, int pipe) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size<1>(tAsA); ++i)
        CUTLASS_PRAGMA_UNROLL
        for (int k = 0; k < size<2>(tAsA); ++k)
          copy(copy_a.with(elem_less(tAcA(0, i, k, k_tile), extent_a)), tAgA(_, i, k, k_tile), tAsA(_, i, k, pipe));
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size<1>(tBsB); ++i)
        CUTLASS_PRAGMA_UNROLL
        for (int k = 0; k < size<2>(tBsB); ++k)
          copy(copy_b.with(elem_less(tBcB(0, i, k, k_tile), extent_b)), tBgB(_, i, k, k_tile), tBsB(_, i, k, pipe));
    };

    const auto k_shape = shape<3>(tAgA);               // the iterator refers to it: keep it alive
    const int k_tiles = size(k_shape);
    auto k_iter = make_coord_iterator(k_shape);  // nested k-tile coordinates, no division
    int issued = 0;
    CUTLASS_PRAGMA_UNROLL
    for (int pipe = 0; pipe < Stages - 1; ++pipe) {
      if (issued < k_tiles) {
        load(*k_iter, pipe);
        ++k_iter;
      }
      cp_async_fence();
      ++issued;
    }

    TiledMma mma;
    auto thr_mma = mma.get_slice(tid);
    Tensor acc = partition_fragment_C(mma, make_shape(Int<BM>{}, Int<BN>{}));  // (MMA, MMA_M, MMA_N)
    clear(acc);
    Tensor tCrA = thr_mma.partition_fragment_A(sA(_, _, 0));
    Tensor tCrB = thr_mma.partition_fragment_B(sB(_, _, 0));
    auto s2r_a = make_tiled_copy_A(typename OperandA::SmemCopyAtom{}, mma);
    auto s2r_b = make_tiled_copy_B(typename OperandB::SmemCopyAtom{}, mma);
    auto s2r_thr_a = s2r_a.get_slice(tid);
    auto s2r_thr_b = s2r_b.get_slice(tid);
    Tensor tCsA = s2r_thr_a.partition_S(sA);  // (CPY, CPY_M, CPY_K, PIPE)
    Tensor tCrA_view = s2r_thr_a.retile_D(tCrA);
    Tensor tCsB = s2r_thr_b.partition_S(sB);
    Tensor tCrB_view = s2r_thr_b.retile_D(tCrB);
    constexpr int KB = size<2>(tCrA);

    int read = 0, write = Stages - 1;
    cp_async_wait<Stages - 2>();
    __syncthreads();
    copy(s2r_a, tCsA(_, _, Int<0>{}, read), tCrA_view(_, _, Int<0>{}));
    copy(s2r_b, tCsB(_, _, Int<0>{}, read), tCrB_view(_, _, Int<0>{}));

    CUTLASS_PRAGMA_NO_UNROLL
    for (int kt = 0; kt < k_tiles; ++kt) {
      for_each(make_int_sequence<KB>{}, [&](auto kb) {
        if (kb == KB - 1) {  // the next stage must have landed before its first fragment is read
          read = read + 1 == Stages ? 0 : read + 1;
          cp_async_wait<Stages - 2>();
          __syncthreads();
        }
        auto kb_next = (kb + Int<1>{}) % Int<KB>{};
        copy(s2r_a, tCsA(_, _, kb_next, read), tCrA_view(_, _, kb_next));
        copy(s2r_b, tCsB(_, _, kb_next, read), tCrB_view(_, _, kb_next));
        if (kb == 0) {  // refill the stage consumed in the previous k-tile
          if (issued < k_tiles) {
            load(*k_iter, write);
            ++k_iter;
          }
          cp_async_fence();
          ++issued;
          write = write + 1 == Stages ? 0 : write + 1;
        }
        cute::gemm(mma, acc, tCrA(_, _, kb), tCrB(_, _, kb), acc);
      });
    }
    cp_async_wait<0>();

    auto [tCgD, tCgAux, tCgBias, tCcD, extent_d] = d_fragments(p, m_blk, n_blk, l, tid);
    const Act act;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(acc); ++i) {
      if (elem_less(tCcD(i), extent_d)) {
        if constexpr (kEpi == kEpiDAct) {
          tCgD(i) = Element(acc(i) * Act::grad(float(tCgAux(i))));
        } else {
          float v = acc(i);
          if (p.epi.bias != nullptr) v += float(tCgBias(i));
          if constexpr (kEpi == kEpiActAux) tCgAux(i) = Element(v);
          tCgD(i) = Element(act(v));
        }
      }
    }
  }

  template <class Tag>
  static void launch(Params const& params, cudaStream_t stream) {
    auto kernel = fastgpt_gemm_kernel<Gemm, Tag, 80>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SharedStorageSize),
               "cudaFuncSetAttribute");
    kernel<<<get_grid_shape(params), get_block_shape(), SharedStorageSize, stream>>>(params);
    check_cuda(cudaGetLastError(), Tag::name);
  }

  // ---- host side: every global access of the CTAs `ctas` ((m, n, l) triples; all if empty),
  // of every k-tile or (k_edges) of the first two and last two ----
  static void trace(Params const& p, std::vector<int> ctas, bool k_edges, Sm80Trace& out) {
    const dim3 grid = get_grid_shape(p);
    if (ctas.empty())
      for (int l = 0; l < int(grid.z); ++l)
        for (int n = 0; n < int(grid.y); ++n)
          for (int m = 0; m < int(grid.x); ++m) ctas.insert(ctas.end(), {m, n, l});
    auto flat = [](auto const& coord, auto const& shape) { return int64_t(make_layout(shape)(coord)); };
    std::set<std::pair<int, int>> a_done, b_done;  // A's loads depend on (m, l) only, B's on (n, l)
    for (size_t c = 0; c + 2 < ctas.size(); c += 3) {
      const int m = ctas[c], n = ctas[c + 1], l = ctas[c + 2];
      if (a_done.insert({m, l}).second) trace_loads<OperandA>(0, m, l, a_tiles(p, m, l), p.a, Int<BM>{}, k_edges, out);
      if (b_done.insert({n, l}).second) trace_loads<OperandB>(1, n, l, b_tiles(p, n, l), p.b, Int<BN>{}, k_edges, out);
      Tensor local = make_identity_tensor(make_shape(Int<BM>{}, Int<BN>{}));
      for (int tid = 0; tid < int(MaxThreadsPerBlock); ++tid) {
        auto [tCgD, tCgAux, tCgBias, tCcD, extent] = d_fragments(p, m, n, l, tid);
        Tensor tCcL = TiledMma{}.get_slice(tid).partition_C(local);
        for (int i = 0; i < size(tCcD); ++i) {
          out.stores.insert(out.stores.end(),
                            {m, n, l, get<0>(tCcL(i)), get<1>(tCcL(i)), flat(get<0>(tCcD(i)), get<0>(extent)),
                             flat(get<1>(tCcD(i)), get<1>(extent)), int64_t(elem_less(tCcD(i), extent)),
                             int64_t(&tCgD(i) - p.epi.d)});
        }
      }
    }
  }

 private:
  template <class Op, class Tiles, class Ptr, class BMN>
  static void trace_loads(int operand, int mn, int l, Tiles const& tiles, Ptr base, BMN, bool k_edges,
                          Sm80Trace& out) {
    auto const& [g, c, extent] = tiles;
    auto flat = [](auto const& coord, auto const& shape) { return int64_t(make_layout(shape)(coord)); };
    Tensor local = make_identity_tensor(make_shape(BMN{}, Int<BK>{}));
    for (int tid = 0; tid < int(MaxThreadsPerBlock); ++tid) {
      auto thr = typename Op::GmemTiledCopy{}.get_slice(tid);
      Tensor tg = thr.partition_S(g);
      Tensor tc = thr.partition_S(c);
      Tensor tl = thr.partition_D(local);
      const auto k_shape = shape<3>(tg);
      auto k_iter = make_coord_iterator(k_shape);
      const int k_tiles = size(k_shape);
      for (int kt = 0; kt < k_tiles; ++kt, ++k_iter) {
        if (k_edges && kt >= 2 && kt < k_tiles - 2) continue;
        for (int i = 0; i < size<1>(tg); ++i)
          for (int k = 0; k < size<2>(tg); ++k)
            for (int v = 0; v < size<0>(tg); ++v) {
              auto crd = tc(v, i, k, *k_iter);
              out.loads.insert(out.loads.end(),
                               {operand, mn, l, kt, get<0>(tl(v, i, k)), get<1>(tl(v, i, k)),
                                flat(get<0>(crd), get<0>(extent)), flat(get<1>(crd), get<1>(extent)),
                                int64_t(elem_less(crd, extent)), int64_t(elem_less(tc(0, i, k, *k_iter), extent)),
                                int64_t(&tg(v, i, k, *k_iter) - base)});
            }
      }
    }
  }
};

// Every global access Kind's kernel would make for p (see Gemm::trace), with fake_pointers().
template <class Kind, class P>
Sm80Trace trace_kind(const P& p, const std::vector<int>& ctas, bool k_edges) {
  Sm80Trace out;
  if (p.dtype == DType::f16) {
    using G = typename Kind::template Gemm<cutlass::half_t>;
    G::trace(Kind::template params<cutlass::half_t>(p, 0, fake_pointers()), ctas, k_edges, out);
  } else {
    using G = typename Kind::template Gemm<cutlass::bfloat16_t>;
    G::trace(Kind::template params<cutlass::bfloat16_t>(p, 0, fake_pointers()), ctas, k_edges, out);
  }
  return out;
}

}  // namespace fastgpt::gemm::sm80
