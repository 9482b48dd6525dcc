// CUDA side of fastgpt::qkv_projection. No (B*T, 3C) intermediate exists in either direction:
//  * forward, y = x2d @ W^T (M = B*T, N = 3C, K = C): the epilogue adds the bias and scatters
//    into the head-split layout (3, B, H, T, D);
//  * backward (fp16/bf16), dx = g2d @ W and dweight = g2d^T @ x2d: the GEMMs gather g2d's
//    elements straight from (3, B, H, T, D) as they fill their tiles.
// fp16/bf16 run on tensor cores through WMMA (qkv_projection_tc_kernel: 64 x 128 tiles, fp32
// accumulators; shared memory (64 + 128) * 40 * 2 B + 64 * 132 * 4 B = 48 KiB, dynamic).
// fp32 (and fp64) forward: a CUDA-core tile kernel, 64 x 64 per 256-thread block, 4 x 4 per
// thread; their backward is cuBLAS through ATen.
// HBM traffic per output tile is K * (BM + BN) element loads plus BM * BN stores.
// Not yet software-pipelined (no cp.async double buffering): `auto` keeps cuBLAS until the
// benchmark shows this path faster.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <c10/cuda/CUDAException.h>

#include "qkv_projection.h"

namespace fastgpt {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

template <typename scalar_t>
__global__ void qkv_projection_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                          const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                          int64_t B, int64_t T, int64_t C, int64_t H, int64_t stride_x_b,
                                          int64_t stride_x_t) {
  __shared__ float xs[BK][BM];
  __shared__ float ws[BK][BN];
  const int64_t M = B * T, N = 3 * C, D = C / H;
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int tid = threadIdx.x, tm = (tid / 16) * 4, tn = (tid % 16) * 4;
  float acc[4][4] = {};

  for (int64_t k0 = 0; k0 < C; k0 += BK) {
    // 64 x 16 elements of each operand, 4 per thread.
    for (int i = tid; i < BM * BK; i += THREADS) {
      const int r = i / BK, kk = i % BK;
      const int64_t m = m0 + r, k = k0 + kk;
      float xv = 0.f;
      if (m < M && k < C) xv = static_cast<float>(x[(m / T) * stride_x_b + (m % T) * stride_x_t + k]);
      xs[kk][r] = xv;
      const int64_t n = n0 + r;
      ws[kk][r] = (n < N && k < C) ? static_cast<float>(w[n * C + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = xs[kk][tm + i];
        b[i] = ws[kk][tn + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }

  // Epilogue: bias, then scatter to out (3, B, H, T, D).
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + tm + i;
    if (m >= M) continue;
    const int64_t b = m / T, t = m % T;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tn + j;
      if (n >= N) continue;
      float v = acc[i][j];
      if (bias != nullptr) v += static_cast<float>(bias[n]);
      const int64_t s = n / C, r = n % C, h = r / D, d = r % D;
      out[(((s * B + b) * H + h) * T + t) * D + d] = static_cast<scalar_t>(v);
    }
  }
}

// ---- tensor-core kernel (fp16 / bf16) ----
// torch builds with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__: convert explicitly.
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr int TC_BM = 64, TC_BN = 128, TC_BK = 32, TC_THREADS = 256, TC_PAD = 8, TC_CPAD = 4;
constexpr size_t TC_SMEM = (size_t)(TC_BM + TC_BN) * (TC_BK + TC_PAD) * 2 + (size_t)TC_BM * (TC_BN + TC_CPAD) * 4;

// Operands of C = A (M x K) @ B (K x N), read element by element through index maps, so the
// head-split tensors are gathered on the fly instead of being copied into a matrix first.
// K_FAST says which index is contiguous in memory, and so how a tile is filled coalesced.

template <typename T>
struct XRows {  // A = x2d (B*T x C), x (B, T, C) with any (b, t) strides
  const T* x; int64_t T_, sb, st;
  static constexpr bool K_FAST = true;
  __device__ T operator()(int64_t m, int64_t k) const { return x[(m / T_) * sb + (m % T_) * st + k]; }
};
template <typename T>
struct XCols {  // B = x2d (B*T x C) as the K x N operand of dweight = g2d^T @ x2d
  const T* x; int64_t T_, sb, st;
  static constexpr bool K_FAST = false;
  __device__ T operator()(int64_t k, int64_t n) const { return x[(k / T_) * sb + (k % T_) * st + n]; }
};
template <typename T>
struct WeightT {  // B = W^T: B(k, n) = W[n, k], W (3C, C) row-major
  const T* w; int64_t C;
  static constexpr bool K_FAST = true;
  __device__ T operator()(int64_t k, int64_t n) const { return w[n * C + k]; }
};
template <typename T>
struct Weight {  // B = W: B(j, c) = W[j, c]
  const T* w; int64_t C;
  static constexpr bool K_FAST = false;
  __device__ T operator()(int64_t k, int64_t n) const { return w[k * C + n]; }
};
// g (3, B, H, T, D) seen as g2d (B*T x 3C): g2d[(b, t), (s, h, d)] = g[s, b, h, t, d].
struct HeadIndex {
  int64_t B, H, T_, C, D;
  __device__ int64_t operator()(int64_t m, int64_t j) const {
    const int64_t b = m / T_, t = m % T_, s = j / C, r = j % C, h = r / D, d = r % D;
    return (((s * B + b) * H + h) * T_ + t) * D + d;
  }
};
template <typename T>
struct GradRows {  // A = g2d (B*T x 3C) for dx = g2d @ W
  const T* g; HeadIndex at;
  static constexpr bool K_FAST = true;
  __device__ T operator()(int64_t m, int64_t k) const { return g[at(m, k)]; }
};
template <typename T>
struct GradCols {  // A = g2d^T (3C x B*T) for dweight = g2d^T @ x2d
  const T* g; HeadIndex at;
  static constexpr bool K_FAST = false;
  __device__ T operator()(int64_t m, int64_t k) const { return g[at(k, m)]; }
};

template <typename T>
struct HeadsScatter {  // forward epilogue: + bias, written as out (3, B, H, T, D)
  T* out; const T* bias; HeadIndex at;
  __device__ void operator()(int64_t m, int64_t n, float v) const {
    if (bias != nullptr) v += to_float(bias[n]);
    out[at(m, n)] = from_float<T>(v);
  }
};
template <typename T>
struct RowMajor {  // plain (M, N) output with leading dimension ld
  T* out; int64_t ld;
  __device__ void operator()(int64_t m, int64_t n, float v) const { out[m * ld + n] = from_float<T>(v); }
};

// Grid (ceil(N / 128), ceil(M / 64)); a 256-thread block (8 warps, 2 x 4) owns a 64 x 128 tile
// of C, each warp 32 x 32 = 2 x 2 WMMA 16x16x16 fragments with fp32 accumulators. Per BK = 32
// step the A (64 x 32) and B (32 x 128) tiles are staged in shared memory (padded rows against
// bank conflicts); the accumulators pass through shared memory once for the epilogue, which
// visits the tile with consecutive threads on consecutive n.
template <typename T, typename ALoad, typename BLoad, typename Store>
__global__ void __launch_bounds__(TC_THREADS)
    qkv_projection_tc_kernel(ALoad A, BLoad Bop, Store store, int64_t M, int64_t N, int64_t K) {
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LDS = TC_BK + TC_PAD, LDC = TC_BN + TC_CPAD;
  T* as = reinterpret_cast<T*>(smem);                         // [TC_BM][LDS]: A row-major (m, k)
  T* bs = as + TC_BM * LDS;                                   // [TC_BN][LDS]: B col-major (k, n)
  float* cs = reinterpret_cast<float*>(bs + TC_BN * LDS);     // [TC_BM][LDC]
  const int64_t m0 = (int64_t)blockIdx.y * TC_BM, n0 = (int64_t)blockIdx.x * TC_BN;
  const int tid = threadIdx.x, warp = tid / 32, wm = (warp / 4) * 32, wn = (warp % 4) * 32;
  const T zero = from_float<T>(0.f);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < K; k0 += TC_BK) {
    for (int i = tid; i < TC_BM * TC_BK; i += TC_THREADS) {
      const int r = ALoad::K_FAST ? i / TC_BK : i % TC_BM, kk = ALoad::K_FAST ? i % TC_BK : i / TC_BM;
      const int64_t m = m0 + r, k = k0 + kk;
      as[r * LDS + kk] = (m < M && k < K) ? A(m, k) : zero;
    }
    for (int i = tid; i < TC_BN * TC_BK; i += TC_THREADS) {
      const int c = BLoad::K_FAST ? i / TC_BK : i % TC_BN, kk = BLoad::K_FAST ? i % TC_BK : i / TC_BN;
      const int64_t n = n0 + c, k = k0 + kk;
      bs[c * LDS + kk] = (n < N && k < K) ? Bop(k, n) : zero;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], as + (wm + 16 * i) * LDS + kk, LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], bs + (wn + 16 * j) * LDS + kk, LDS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < TC_BM * TC_BN; i += TC_THREADS) {
    const int r = i / TC_BN, c = i % TC_BN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < M && n < N) store(m, n, cs[r * LDC + c]);
  }
}

template <typename T, typename ALoad, typename BLoad, typename Store>
void launch_tc(ALoad a, BLoad b, Store store, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  const dim3 grid((N + TC_BN - 1) / TC_BN, (M + TC_BM - 1) / TC_BM);
  TORCH_CHECK(grid.y <= 65535, "qkv_projection: ", M, " rows exceed the CUDA kernel's grid limit of ",
              65535 * TC_BM);
  auto kernel = qkv_projection_tc_kernel<T, ALoad, BLoad, Store>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)TC_SMEM));
  kernel<<<grid, TC_THREADS, TC_SMEM, stream>>>(a, b, store, M, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// at::Half / at::BFloat16 share their bit layout with __half / __nv_bfloat16.
template <typename T>
const T* ptr(const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }
template <typename T>
T* mut_ptr(at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

template <typename T>
void forward_tc(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::Tensor& out,
                cudaStream_t stream) {
  const int64_t B = x.size(0), T_ = x.size(1), C = x.size(2), H = out.size(2);
  const HeadIndex at{B, H, T_, C, C / H};
  launch_tc<T>(XRows<T>{ptr<T>(x), T_, x.stride(0), x.stride(1)}, WeightT<T>{ptr<T>(weight), C},
               HeadsScatter<T>{mut_ptr<T>(out), bias.has_value() ? ptr<T>(*bias) : nullptr, at}, B * T_, 3 * C, C,
               stream);
}

template <typename T>
void backward_tc(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, at::Tensor& dx,
                 at::Tensor& dweight, cudaStream_t stream) {
  const int64_t B = x.size(0), T_ = x.size(1), C = x.size(2), H = grad.size(2);
  const HeadIndex at{B, H, T_, C, C / H};
  // dx (B*T x C) = g2d (B*T x 3C) @ W (3C x C)
  launch_tc<T>(GradRows<T>{ptr<T>(grad), at}, Weight<T>{ptr<T>(weight), C}, RowMajor<T>{mut_ptr<T>(dx), C}, B * T_,
               C, 3 * C, stream);
  // dweight (3C x C) = g2d^T (3C x B*T) @ x2d (B*T x C)
  launch_tc<T>(GradCols<T>{ptr<T>(grad), at}, XCols<T>{ptr<T>(x), T_, x.stride(0), x.stride(1)},
               RowMajor<T>{mut_ptr<T>(dweight), C}, 3 * C, C, B * T_, stream);
}

}  // namespace

void qkv_projection_cuda_launch(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::Tensor& out) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = out.size(2);
  const dim3 grid((3 * C + BN - 1) / BN, (B * T + BM - 1) / BM);
  TORCH_CHECK(grid.y <= 65535, "qkv_projection: B*T = ", B * T, " exceeds the CUDA kernel's grid limit of ",
              65535 * BM, " rows");
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kHalf) return forward_tc<__half>(x, weight, bias, out, stream);
  if (x.scalar_type() == at::kBFloat16) return forward_tc<__nv_bfloat16>(x, weight, bias, out, stream);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "qkv_projection_cuda", [&] {
    qkv_projection_fwd_kernel<scalar_t><<<grid, THREADS, 0, stream>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), B, T, C, H,
        x.stride(0), x.stride(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool qkv_projection_backward_cuda_launch(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                         at::Tensor& dx, at::Tensor& dweight) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kHalf) return backward_tc<__half>(grad, x, weight, dx, dweight, stream), true;
  if (x.scalar_type() == at::kBFloat16) return backward_tc<__nv_bfloat16>(grad, x, weight, dx, dweight, stream), true;
  return false;  // fp32/fp64: the caller uses cuBLAS through ATen
}

}  // namespace fastgpt
