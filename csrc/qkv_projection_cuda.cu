// CUDA forward of fastgpt::qkv_projection: tiled GEMMs whose epilogue adds the bias and writes
// into the head-split layout (3, B, H, T, D), so no (B*T, 3C) intermediate exists.
//
// Two kernels, both computing y = x2d @ W^T (M = B*T rows, N = 3C columns, K = C) in fp32:
//  * fp16/bf16: tensor cores through WMMA (16x16x16 fragments). Grid (ceil(N/128), ceil(M/64));
//    a 256-thread block (8 warps, 2 x 4) owns a 64 x 128 tile, each warp 32 x 32 = 2 x 2
//    fragments. Per BK = 32 step the x tile (64 x 32) and W tile (128 x 32) are staged in shared
//    memory (bf16/fp16, padded rows against bank conflicts); the fp32 accumulators pass through
//    shared memory once for the epilogue (bias, cast, scatter with D-contiguous stores).
//    Shared memory: (64 + 128) * 40 * 2 B + 64 * 132 * 4 B = 48.5 KiB (dynamic).
//  * fp32 (and fp64): a CUDA-core tile kernel, 64 x 64 per 256-thread block, 4 x 4 per thread.
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

template <typename scalar_t>
__global__ void __launch_bounds__(TC_THREADS) qkv_projection_fwd_tc_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ out, int64_t B, int64_t T, int64_t C, int64_t H, int64_t stride_x_b, int64_t stride_x_t) {
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  scalar_t* xs = reinterpret_cast<scalar_t*>(smem);          // [TC_BM][TC_BK + TC_PAD], row-major (m, k)
  scalar_t* ws = xs + TC_BM * (TC_BK + TC_PAD);               // [TC_BN][TC_BK + TC_PAD]: (k, n) col-major
  float* cs = reinterpret_cast<float*>(ws + TC_BN * (TC_BK + TC_PAD));  // [TC_BM][TC_BN + TC_CPAD]
  const int64_t M = B * T, N = 3 * C, D = C / H;
  const int64_t m0 = (int64_t)blockIdx.y * TC_BM, n0 = (int64_t)blockIdx.x * TC_BN;
  const int tid = threadIdx.x, warp = tid / 32, wm = (warp / 4) * 32, wn = (warp % 4) * 32;
  constexpr int LDS = TC_BK + TC_PAD;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < C; k0 += TC_BK) {
    for (int i = tid; i < TC_BM * TC_BK; i += TC_THREADS) {  // consecutive threads along k: coalesced
      const int r = i / TC_BK, kk = i % TC_BK;
      const int64_t m = m0 + r, k = k0 + kk;
      xs[r * LDS + kk] = (m < M && k < C) ? x[(m / T) * stride_x_b + (m % T) * stride_x_t + k] : from_float<scalar_t>(0.f);
    }
    for (int i = tid; i < TC_BN * TC_BK; i += TC_THREADS) {
      const int r = i / TC_BK, kk = i % TC_BK;
      const int64_t n = n0 + r, k = k0 + kk;
      ws[r * LDS + kk] = (n < N && k < C) ? w[n * C + k] : from_float<scalar_t>(0.f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], xs + (wm + 16 * i) * LDS + kk, LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], ws + (wn + 16 * j) * LDS + kk, LDS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

  constexpr int LDC = TC_BN + TC_CPAD;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  // Epilogue: consecutive threads take consecutive n, i.e. consecutive d within a head.
  for (int i = tid; i < TC_BM * TC_BN; i += TC_THREADS) {
    const int r = i / TC_BN, c = i % TC_BN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m >= M || n >= N) continue;
    float v = cs[r * LDC + c];
    if (bias != nullptr) v += to_float(bias[n]);
    const int64_t b = m / T, t = m % T, s = n / C, rem = n % C, h = rem / D, d = rem % D;
    out[(((s * B + b) * H + h) * T + t) * D + d] = from_float<scalar_t>(v);
  }
}

template <typename scalar_t>
void launch_tc(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::Tensor& out,
               cudaStream_t stream) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = out.size(2);
  const dim3 grid((3 * C + TC_BN - 1) / TC_BN, (B * T + TC_BM - 1) / TC_BM);
  TORCH_CHECK(grid.y <= 65535, "qkv_projection: B*T = ", B * T, " exceeds the CUDA kernel's grid limit of ",
              65535 * TC_BM, " rows");
  auto kernel = qkv_projection_fwd_tc_kernel<scalar_t>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)TC_SMEM));
  // at::Half / at::BFloat16 share their bit layout with __half / __nv_bfloat16.
  kernel<<<grid, TC_THREADS, TC_SMEM, stream>>>(
      reinterpret_cast<const scalar_t*>(x.data_ptr()), reinterpret_cast<const scalar_t*>(weight.data_ptr()),
      bias.has_value() ? reinterpret_cast<const scalar_t*>(bias->data_ptr()) : nullptr,
      reinterpret_cast<scalar_t*>(out.data_ptr()), B, T, C, H, x.stride(0), x.stride(1));
}

}  // namespace

void qkv_projection_cuda_launch(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::Tensor& out) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = out.size(2);
  const dim3 grid((3 * C + BN - 1) / BN, (B * T + BM - 1) / BM);
  TORCH_CHECK(grid.y <= 65535, "qkv_projection: B*T = ", B * T, " exceeds the CUDA kernel's grid limit of ",
              65535 * BM, " rows");
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kHalf) {
    launch_tc<__half>(x, weight, bias, out, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if (x.scalar_type() == at::kBFloat16) {
    launch_tc<__nv_bfloat16>(x, weight, bias, out, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "qkv_projection_cuda", [&] {
    qkv_projection_fwd_kernel<scalar_t><<<grid, THREADS, 0, stream>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), B, T, C, H,
        x.stride(0), x.stride(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastgpt
