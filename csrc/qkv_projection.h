// fastgpt::qkv_projection: the fused QKV projection of nanoGPT's c_attn.
//
// x (B, T, C) @ weight(3C, C)^T + bias(3C) written straight into the head-split layout
// out (3, B, H, T, D) with D = C / H: out[0], out[1], out[2] are q, k, v as contiguous
// (B, H, T, D) tensors, the layout the attention kernel reads.
// CPU: ATen (qkv_projection_cpu.cpp). CUDA: CUTLASS GEMMs for fp16/bf16 (gemm_*.cu), cuBLAS
// through ATen for fp32.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <string>

namespace fastgpt {

// Argument checks shared by every device; they name the argument and what was expected.
void check_qkv_projection_args(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t n_head);
void check_qkv_projection_grad(const at::Tensor& grad, const at::Tensor& x);

at::Tensor qkv_projection_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t n_head);

// grad (3, B, H, T, D) -> (dx (B, T, C), dweight (3C, C), dbias (3C) or (0,) without a bias).
// Written with ATen ops only, so the same code serves CPU tensors and fp32 CUDA tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_aten(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, bool has_bias);

// "" when the op's `cuda` backend runs this call (any CPU call; CUDA calls the kernels serve),
// else why it cannot: the reason a forced `cuda` backend reports.
std::string qkv_projection_unsupported(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t n_head);

}  // namespace fastgpt
