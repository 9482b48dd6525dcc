// CPU implementation of fastgpt::qkv_projection (ATen, no Python): the layout logic and the
// autograd path of the op run on machines without a GPU, and it is the op's CPU twin.
#include "qkv_projection.h"

namespace fastgpt {

at::Tensor qkv_projection_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t n_head) {
  check_qkv_projection_args(x, weight, bias, n_head);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), D = C / n_head;
  auto x2d = x.reshape({B * T, C});
  auto y = bias.has_value() && bias->defined() ? at::addmm(*bias, x2d, weight.t()) : at::mm(x2d, weight.t());
  // (B*T, 3C) -> (B, T, 3, H, D) -> (3, B, H, T, D), one contiguous buffer.
  return y.view({B, T, 3, n_head, D}).permute({2, 0, 3, 1, 4}).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_aten(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, bool has_bias) {
  check_qkv_projection_grad(grad, x);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  // (3, B, H, T, D) -> (B, T, 3, H, D) -> (B*T, 3C): the matrix nn.Linear's backward sees.
  auto g2d = grad.permute({1, 3, 0, 2, 4}).reshape({B * T, 3 * C});
  auto x2d = x.reshape({B * T, C});
  auto dx = at::mm(g2d, weight).view({B, T, C});
  auto dweight = at::mm(g2d.t(), x2d);
  auto dbias = has_bias ? g2d.sum(0) : at::empty({0}, weight.options());  // no bias: empty
  return {dx, dweight, dbias};
}

}  // namespace fastgpt
