// dpre = dy * gelu'(pre) for linear_bias_gelu's backward on CUDA (fp16/bf16), before its dx and
// dweight GEMMs, with the bias gradient's column sums fused in (gelu_backward.h).
// Grid (column vectors / 128, row blocks): a thread owns one 16-byte vector (8 columns) and walks
// its block's rows, so a warp reads and writes 512 contiguous bytes per row; fp32 math
// (gelu.cuh) and fp32 column sums, one partial row per row block, summed by the caller (no
// atomics: deterministic). HBM traffic: 3 x 2 bytes per element plus 4 * N bytes per row block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "gelu.cuh"
#include "gelu_backward.h"

namespace fastgpt::gemm {
namespace {

constexpr int kThreads = 128, kTargetBlocks = 1024;

// torch builds with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__: convert explicitly.
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <class T, class Gelu>
__global__ void __launch_bounds__(kThreads) gelu_backward_kernel(int64_t rows, int vectors, int64_t rows_per_block,
                                                                 const uint4* __restrict__ dy,
                                                                 const uint4* __restrict__ pre, uint4* __restrict__ dpre,
                                                                 float* __restrict__ partial) {
  const int v = blockIdx.x * kThreads + threadIdx.x;  // this thread's column vector
  if (v >= vectors) return;
  const int64_t begin = blockIdx.y * rows_per_block, end = min(rows, begin + rows_per_block);
  float sum[8] = {};
  for (int64_t r = begin; r < end; ++r) {
    const int64_t i = r * vectors + v;
    const uint4 g = dy[i], x = pre[i];
    uint4 out;
    const T* gv = reinterpret_cast<const T*>(&g);
    const T* xv = reinterpret_cast<const T*>(&x);
    T* ov = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const T d = from_float<T>(to_float(gv[j]) * Gelu::grad(to_float(xv[j])));
      ov[j] = d;
      sum[j] += to_float(d);  // the rounded dpre the GEMMs see, as the unfused path sums it
    }
    dpre[i] = out;
  }
  if (partial != nullptr) {
    float* p = partial + blockIdx.y * int64_t(vectors) * 8 + v * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) p[j] = sum[j];
  }
}

template <class T, class Gelu>
void launch(int64_t rows, int N, const void* dy, const void* pre, void* dpre, float* partial, cudaStream_t stream) {
  const int vectors = N / 8;
  const int row_blocks = gelu_backward_row_blocks(rows, N);
  const int64_t rows_per_block = (rows + row_blocks - 1) / row_blocks;
  const dim3 grid((vectors + kThreads - 1) / kThreads, row_blocks);
  gelu_backward_kernel<T, Gelu><<<grid, kThreads, 0, stream>>>(rows, vectors, rows_per_block,
                                                              static_cast<const uint4*>(dy),
                                                              static_cast<const uint4*>(pre),
                                                              static_cast<uint4*>(dpre), partial);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("gelu_backward: ") + cudaGetErrorString(err));
}

}  // namespace

// Enough row blocks for ~kTargetBlocks CTAs, at most one per row and 65535 (grid.y).
int gelu_backward_row_blocks(int64_t rows, int N) {
  const int column_blocks = (N / 8 + kThreads - 1) / kThreads;
  const int64_t want = std::max<int64_t>(1, kTargetBlocks / std::max(column_blocks, 1));
  return int(std::max<int64_t>(1, std::min<int64_t>({want, rows, 65535})));
}

void gelu_backward(DType dtype, Gelu gelu, int64_t rows, int N, const void* dy, const void* pre, void* dpre,
                   float* partial, cudaStream_t stream) {
  if (rows == 0 || N == 0) return;
  if (dtype == DType::f16)
    gelu == Gelu::erf ? launch<__half, GeluErf>(rows, N, dy, pre, dpre, partial, stream)
                      : launch<__half, GeluTanh>(rows, N, dy, pre, dpre, partial, stream);
  else
    gelu == Gelu::erf ? launch<__nv_bfloat16, GeluErf>(rows, N, dy, pre, dpre, partial, stream)
                      : launch<__nv_bfloat16, GeluTanh>(rows, N, dy, pre, dpre, partial, stream);
}

}  // namespace fastgpt::gemm
