// linear_bias_gelu's elementwise backward on CUDA: dpre = dy * gelu'(pre), and the bias gradient
// (the column sums of dpre) in the same pass. Plain C++ declarations (gelu_backward.cu).
#pragma once
#include <cstdint>

#include "gemm.h"

namespace fastgpt::gemm {

// dy, pre, dpre: (rows, N) row-major, 16-byte aligned, N % 8 == 0. When partial is not null it
// receives, per block of rows, the fp32 column sums of dpre: partial (gelu_backward_row_blocks(rows), N),
// whose sum over dim 0 (by the caller, deterministic) is the bias gradient.
void gelu_backward(DType dtype, Gelu gelu, int64_t rows, int N, const void* dy, const void* pre, void* dpre,
                   float* partial, cudaStream_t stream);
int gelu_backward_row_blocks(int64_t rows, int N);

}  // namespace fastgpt::gemm
