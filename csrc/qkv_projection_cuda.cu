// CUDA forward of fastgpt::qkv_projection: a tiled GEMM whose epilogue adds the bias and
// writes into the head-split layout, so no (B*T, 3C) intermediate exists.
//
// Grid: (ceil(3C / BN), ceil(B*T / BM)); one 256-thread block computes a BM x BN tile of
// y = x2d @ W^T, each thread a 4 x 4 sub-tile, accumulating in fp32. The x and W tiles pass
// through shared memory as fp32 (BM*BK + BN*BK floats = 8 KiB). HBM traffic per output tile is
// K*(BM+BN) loads plus BM*BN stores. This is the first, CUDA-core version; the tensor-core
// kernel replaces it (see the QKV issue), and `auto` does not pick it over cuBLAS.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
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

}  // namespace

void qkv_projection_cuda_launch(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::Tensor& out) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = out.size(2);
  const dim3 grid((3 * C + BN - 1) / BN, (B * T + BM - 1) / BM);
  TORCH_CHECK(grid.y <= 65535, "qkv_projection: B*T = ", B * T, " exceeds the CUDA kernel's grid limit of ",
              65535 * BM, " rows");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "qkv_projection_cuda", [&] {
    qkv_projection_fwd_kernel<scalar_t><<<grid, THREADS, 0, stream>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), B, T, C, H,
        x.stride(0), x.stride(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastgpt
