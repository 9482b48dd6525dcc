// Schema, argument checks and device registration of fastgpt::qkv_projection.
// Device code lives in qkv_projection_cuda.cu, the CPU twin in qkv_projection_cpu.cpp.
#include <torch/library.h>

#include "qkv_projection.h"
#ifdef FASTGPT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fastgpt {

void check_qkv_projection_args(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t n_head) {
  TORCH_CHECK(x.dim() == 3, "qkv_projection: x must be (B, T, C), got a ", x.dim(), "-d tensor of shape ", x.sizes());
  const int64_t C = x.size(2);
  TORCH_CHECK(x.is_floating_point(), "qkv_projection: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(n_head > 0, "qkv_projection: n_head must be positive, got ", n_head);
  TORCH_CHECK(C % n_head == 0, "qkv_projection: n_head (", n_head, ") must divide C = x.size(2) = ", C);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == 3 * C && weight.size(1) == C,
              "qkv_projection: weight must be (3C, C) = (", 3 * C, ", ", C, ") for x of shape ", x.sizes(),
              ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "qkv_projection: weight dtype ", weight.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "qkv_projection: weight is on ", weight.device(), " but x is on ",
              x.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 3 * C, "qkv_projection: bias must be (3C,) = (", 3 * C,
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "qkv_projection: bias dtype ", bias->scalar_type(),
                " must equal x dtype ", x.scalar_type());
    TORCH_CHECK(bias->device() == x.device(), "qkv_projection: bias is on ", bias->device(), " but x is on ",
                x.device());
  }
}

void check_qkv_projection_grad(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "qkv_projection_backward: x must be (B, T, C), got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  TORCH_CHECK(grad.dim() == 5 && grad.size(0) == 3 && grad.size(1) == B && grad.size(3) == T &&
                  grad.size(2) * grad.size(4) == C,
              "qkv_projection_backward: grad must be (3, B, H, T, D) = (3, ", B, ", H, ", T, ", D) with H*D = ", C,
              ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "qkv_projection_backward: grad dtype ", grad.scalar_type(),
              " must equal x dtype ", x.scalar_type());
}

#ifdef FASTGPT_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                            const at::Tensor& weight, bool has_bias) {
  check_qkv_projection_grad(grad, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t C = x.size(2);
  auto g = grad.contiguous();
  auto xs = x.stride(2) == 1 ? x : x.contiguous();
  auto w = weight.contiguous();
  auto dx = at::empty(x.sizes(), x.options());
  auto dweight = at::empty_like(w);
  if (x.numel() == 0 || !qkv_projection_backward_cuda_launch(g, xs, w, dx, dweight))
    return qkv_projection_backward_aten(grad, x, weight, has_bias);
  // (3, B, H, T, D) summed over B and T is (3, H, D): the bias layout, no gather needed.
  auto dbias = has_bias ? g.sum({1, 3}).reshape({3 * C}) : at::empty({0}, weight.options());
  return {dx, dweight, dbias};
}

at::Tensor qkv_projection_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t n_head) {
  check_qkv_projection_args(x, weight, bias, n_head);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), D = C / n_head;
  // The kernel takes any (batch, time) strides but needs unit stride along C, as does weight.
  auto xs = x.stride(2) == 1 ? x : x.contiguous();
  auto w = weight.contiguous();
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  auto out = at::empty({3, B, n_head, T, D}, x.options());
  if (out.numel() > 0) qkv_projection_cuda_launch(xs, w, b, out);  // on the current stream
  return out;
}
#endif

}  // namespace fastgpt

TORCH_LIBRARY(fastgpt, m) {
  m.def("qkv_projection(Tensor x, Tensor weight, Tensor? bias, int n_head) -> Tensor");
  m.def("qkv_projection_backward(Tensor grad, Tensor x, Tensor weight, bool has_bias) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgpt, CPU, m) {
  m.impl("qkv_projection", &fastgpt::qkv_projection_cpu);
  m.impl("qkv_projection_backward", &fastgpt::qkv_projection_backward_aten);
}

#ifdef FASTGPT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastgpt, CUDA, m) {
  m.impl("qkv_projection", &fastgpt::qkv_projection_cuda);
  m.impl("qkv_projection_backward", &fastgpt::qkv_projection_backward_cuda);
}
#endif
