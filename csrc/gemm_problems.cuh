// The GEMMs of fastgpt's ops as CuTe problems: the (M, N, K, L) shape and the strides of A
// (M, K, L), B (N, K, L) and D (M, N, L), with nested modes where a tensor's layout needs them.
// The Hopper and Ampere kernels and the host-side probes all take their layouts from here.
//
// QKV projection, D = C / H, q/k/v index s, head h, time t, batch b:
//   W (3C, C) row-major: row (d,h,s) = s*C + h*D + d.   out, grad (3, B, H, T, D) contiguous.
//   forward  out(t, (d,h,s), b) = sum_c x(t, c, b) W((d,h,s), c) [+ bias(d,h,s)]
//            M = T, N = (D, H, 3), K = C, L = B
//   dx       dx(t, c, b) = sum_(d,h,s) grad(t, (d,h,s), b) W((d,h,s), c)
//            M = T, N = C, K = (D, H, 3), L = B
//   dweight  dW((d,h,s), c) = sum_(t,b) grad((d,h,s), (t,b)) x(c, (t,b))
//            M = (D, H, 3), N = C, K = (T, B), L = 1
// c_fc: pre(m, n) = sum_k x(m, k) W(n, k) [+ bias(n)], M = rows, N = 4C, K = C, L = 1.
// c_fc's dGELU behind c_proj's dx: dpre(m, n) = gelu'(pre(m, n)) sum_k grad(m, k) Wp(k, n),
//   Wp = c_proj.weight (C, 4C) row-major read as B (n, k) with n contiguous; M = rows, N = 4C, K = C.
// Shapes are 32-bit (divisions by them stay inline); strides are 64-bit.
#pragma once
#include <cute/tensor.hpp>

#include "gemm.h"

namespace fastgpt::gemm {

using cute::_0;
using cute::_1;
using cute::Shape;
using cute::Stride;
using cute::make_shape;
using Heads3 = Shape<int, int, int>;  // (D, H, 3)

// (3, B, H, T, D) strides of t, h, b, s (d has stride 1).
struct HeadStrides {
  int64_t t, h, b, s;
  explicit HeadStrides(const QkvProblem& p)
      : t(p.C / p.H), h(int64_t(p.T) * (p.C / p.H)), b(p.H * h), s(p.B * b) {}
};

inline Heads3 heads(const QkvProblem& p) { return make_shape(p.C / p.H, p.H, 3); }
// W's rows (d,h,s) as a nested mode: strides C, D*C, C*C.
inline Stride<int64_t, int64_t, int64_t> weight_rows(const QkvProblem& p) {
  const int64_t C = p.C;
  return {C, int64_t(p.C / p.H) * C, C * C};
}

struct QkvFwdProblem {
  using ProblemShape = Shape<int, Heads3, int, int>;
  using StrideA = Stride<int64_t, _1, int64_t>;                            // x (t, c, b)
  using StrideB = Stride<Stride<int64_t, int64_t, int64_t>, _1, _0>;       // W ((d,h,s), c)
  using StrideD = Stride<int64_t, Stride<_1, int64_t, int64_t>, int64_t>;  // out (t, (d,h,s), b)
  static ProblemShape shape(const QkvProblem& p) { return {p.T, heads(p), p.C, p.B}; }
  static StrideA stride_a(const QkvProblem& p) { return {p.x_stride_t, _1{}, p.x_stride_b}; }
  static StrideB stride_b(const QkvProblem& p) { return {weight_rows(p), _1{}, _0{}}; }
  static StrideD stride_d(const QkvProblem& p) {
    const HeadStrides hs(p);
    return {hs.t, {_1{}, hs.h, hs.s}, hs.b};
  }
};

struct QkvDxProblem {
  using ProblemShape = Shape<int, int, Heads3, int>;
  using StrideA = Stride<int64_t, Stride<_1, int64_t, int64_t>, int64_t>;  // grad (t, (d,h,s), b)
  using StrideB = Stride<_1, Stride<int64_t, int64_t, int64_t>, _0>;       // W (c, (d,h,s))
  using StrideD = Stride<int64_t, _1, int64_t>;                            // dx (t, c, b)
  static ProblemShape shape(const QkvProblem& p) { return {p.T, p.C, heads(p), p.B}; }
  static StrideA stride_a(const QkvProblem& p) {
    const HeadStrides hs(p);
    return {hs.t, {_1{}, hs.h, hs.s}, hs.b};
  }
  static StrideB stride_b(const QkvProblem& p) { return {_1{}, weight_rows(p), _0{}}; }
  static StrideD stride_d(const QkvProblem& p) { return {int64_t(p.C), _1{}, int64_t(p.T) * p.C}; }
};

struct QkvDwProblem {
  using ProblemShape = Shape<Heads3, int, Shape<int, int>, int>;
  using StrideA = Stride<Stride<_1, int64_t, int64_t>, Stride<int64_t, int64_t>, _0>;  // grad ((d,h,s), (t,b))
  using StrideB = Stride<_1, Stride<int64_t, int64_t>, _0>;                            // x (c, (t,b))
  using StrideD = Stride<Stride<int64_t, int64_t, int64_t>, _1, _0>;                   // dW ((d,h,s), c)
  static ProblemShape shape(const QkvProblem& p) { return {heads(p), p.C, make_shape(p.T, p.B), 1}; }
  static StrideA stride_a(const QkvProblem& p) {
    const HeadStrides hs(p);
    return {{_1{}, hs.h, hs.s}, {hs.t, hs.b}, _0{}};
  }
  static StrideB stride_b(const QkvProblem& p) { return {_1{}, {p.x_stride_t, p.x_stride_b}, _0{}}; }
  static StrideD stride_d(const QkvProblem& p) { return {weight_rows(p), _1{}, _0{}}; }
};

struct FcProblemLayout {
  using ProblemShape = Shape<int, int, int, int>;
  using StrideA = Stride<int64_t, _1, _0>;  // x (m, k)
  using StrideB = Stride<int64_t, _1, _0>;  // W (n, k)
  using StrideD = Stride<int64_t, _1, _0>;  // y, pre (m, n)
  static ProblemShape shape(const FcProblem& p) { return {int(p.M), p.N, p.K, 1}; }
  static StrideA stride_a(const FcProblem& p) { return {p.x_stride, _1{}, _0{}}; }
  static StrideB stride_b(const FcProblem& p) { return {int64_t(p.K), _1{}, _0{}}; }
  static StrideD stride_d(const FcProblem& p) { return {int64_t(p.N), _1{}, _0{}}; }
};

struct FcDgeluProblemLayout {
  using ProblemShape = Shape<int, int, int, int>;
  using StrideA = Stride<int64_t, _1, _0>;  // grad (m, k)
  using StrideB = Stride<_1, int64_t, _0>;  // Wp (n, k): N-major
  using StrideD = Stride<int64_t, _1, _0>;  // dpre, pre (m, n)
  static ProblemShape shape(const FcProblem& p) { return {int(p.M), p.N, p.K, 1}; }
  static StrideA stride_a(const FcProblem& p) { return {p.x_stride, _1{}, _0{}}; }
  static StrideB stride_b(const FcProblem& p) { return {_1{}, int64_t(p.N), _0{}}; }
  static StrideD stride_d(const FcProblem& p) { return {int64_t(p.N), _1{}, _0{}}; }
};

}  // namespace fastgpt::gemm
