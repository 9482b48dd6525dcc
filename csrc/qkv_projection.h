// fastgpt::qkv_projection — the fused QKV projection of nanoGPT's c_attn.
//
// x (B, T, C) @ weight(3C, C)^T + bias(3C) written straight into the head-split layout
// out (3, B, H, T, D) with D = C / H: out[0], out[1], out[2] are q, k, v as contiguous
// (B, H, T, D) tensors, the layout the attention kernel reads.
#pragma once
#include <ATen/ATen.h>
#include <optional>

namespace fastgpt {

// Argument checks shared by every device; they name the argument and what was expected.
void check_qkv_projection_args(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t n_head);
void check_qkv_projection_grad(const at::Tensor& grad, const at::Tensor& x);

at::Tensor qkv_projection_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t n_head);

// grad (3, B, H, T, D) -> (dx (B, T, C), dweight (3C, C), dbias (3C) or (0,) without a bias).
// Written with ATen ops only, so the same code serves CPU and CUDA tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_aten(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, bool has_bias);

#ifdef FASTGPT_WITH_CUDA
// Launchers in qkv_projection_cuda.cu; the caller has checked the arguments, set the device
// guard and made x's last dimension contiguous.
void qkv_projection_cuda_launch(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::Tensor& out);
// Tensor-core dx and dweight for fp16/bf16 (grad contiguous); false for other dtypes.
bool qkv_projection_backward_cuda_launch(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                         at::Tensor& dx, at::Tensor& dweight);
#endif

}  // namespace fastgpt
