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

// fastgpt::mlp: nanoGPT's MLP without its dropout, y = c_proj(gelu(c_fc(x))).
//
// x (..., C), fc_weight (N, C), fc_bias (N) or none, proj_weight (C_out, N), proj_bias (C_out)
// or none -> (y, pre, act): y (..., C_out); pre = c_fc(x) and act = gelu(pre), (..., N), kept for
// the backward. The forward is linear_bias_gelu's GEMM then c_proj's. The backward takes dy:
//   dpre = gelu'(pre) * (dy @ proj_weight);  dfc_bias = sum_rows(dpre)
//   dx = dpre @ fc_weight;  dfc_weight = dpre^T @ x;  dproj_weight = dy^T @ act;  dproj_bias = sum_rows(dy)
// The op spans both layers so that on CUDA (fp16/bf16) dpre is one CUTLASS GEMM, c_proj's dx,
// with the dGELU in its epilogue (gemm.h: fc_dgelu), pre read there; dfc_bias is one column-sum
// pass over dpre, the rest are cuBLAS GEMMs. CPU: ATen GEMMs and gelu.cuh's formulas.
void check_mlp_args(const at::Tensor& x, const at::Tensor& fc_weight, const std::optional<at::Tensor>& fc_bias,
                    const at::Tensor& proj_weight, const std::optional<at::Tensor>& proj_bias,
                    c10::string_view approximate);
std::string mlp_unsupported(const at::Tensor& x, const at::Tensor& fc_weight, const std::optional<at::Tensor>& fc_bias,
                            const at::Tensor& proj_weight, const std::optional<at::Tensor>& proj_bias,
                            c10::string_view approximate);

}  // namespace fastgpt
