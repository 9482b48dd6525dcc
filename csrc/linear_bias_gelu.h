// fastgpt::linear_bias_gelu: c_fc with its bias and GELU fused, y = gelu(x @ weight^T + bias).
//
// x (..., K), weight (N, K), bias (N) or none -> (y, pre), both (..., N) in x's dtype; pre is the
// pre-activation x @ weight^T + bias, kept for the backward. approximate: "none" (exact erf,
// nanoGPT's nn.GELU()) or "tanh" (GPT-2's). The backward takes dy and pre:
//   dpre = dy * gelu'(pre);  dx = dpre @ weight;  dweight = dpre^T @ x;  dbias = sum_rows(dpre).
// CPU: ATen GEMMs and gelu.cuh's GELU (the formulas the CUDA kernels use). CUDA: the forward
// is a CUTLASS GEMM with bias, GELU and the pre-activation store in its epilogue (fp16/bf16);
// the backward one pass for dpre and dbias together (gelu_backward.cu), then two cuBLAS GEMMs
// for dx and dweight; fp32 runs on ATen.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <string>

namespace fastgpt {

void check_linear_bias_gelu_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::string_view approximate);

// "" when the op's `cuda` backend runs this call, else why not (see qkv_projection.h).
std::string linear_bias_gelu_unsupported(const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, c10::string_view approximate);

}  // namespace fastgpt
