// Argument checks and device implementations of fastgpt::qkv_projection (schema in module.cpp).
// The CPU twin lives in qkv_projection_cpu.cpp; the CUDA GEMMs in gemm_*.cu behind gemm.h.
#include <torch/library.h>

#include "qkv_projection.h"
#ifdef FASTGPT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "cuda_utils.h"
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
namespace {

bool uses_kernels(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
}

gemm::QkvProblem problem(const at::Tensor& x, int64_t n_head) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  const int64_t st = T == 1 ? C : x.stride(1), sb = B == 1 ? T * st : x.stride(0);  // any stride serves size 1
  return {int(B), int(T), int(C), int(n_head), sb, st, gemm_dtype(x)};
}

at::Tensor qkv_projection_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t n_head) {
  check_qkv_projection_args(x, weight, bias, n_head);
  const c10::cuda::CUDAGuard guard(x.device());
  if (!uses_kernels(x)) return qkv_projection_cpu(x, weight, bias, n_head);  // fp32: cuBLAS through ATen
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), D = C / n_head;
  auto out = at::empty({3, B, n_head, T, D}, x.options());
  if (out.numel() == 0) return out;
  const auto xs = kernel_ready(x), w = kernel_ready(weight);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = kernel_ready(*bias);
  const auto dev = device_info();
  run_gemm([&] {
    gemm::qkv_forward(problem(xs, n_head), dev.family, dev.sm_count, xs.data_ptr(), w.data_ptr(),
                      b ? b->data_ptr() : nullptr, out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                            const at::Tensor& weight, bool has_bias) {
  check_qkv_projection_grad(grad, x);
  const c10::cuda::CUDAGuard guard(x.device());
  if (!uses_kernels(x) || x.numel() == 0) return qkv_projection_backward_aten(grad, x, weight, has_bias);
  const int64_t C = x.size(2), n_head = grad.size(2);
  const auto g = grad.contiguous(), xs = kernel_ready(x), w = kernel_ready(weight);
  auto dx = at::empty(x.sizes(), x.options());
  auto dweight = at::empty({3 * C, C}, weight.options());
  const auto p = problem(xs, n_head);
  const auto dev = device_info();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  run_gemm([&] {
    gemm::qkv_backward_dx(p, dev.family, dev.sm_count, g.data_ptr(), w.data_ptr(), dx.data_ptr(), stream);
    gemm::qkv_backward_dw(p, dev.family, dev.sm_count, g.data_ptr(), xs.data_ptr(), dweight.data_ptr(), stream);
  });
  // (3, B, H, T, D) summed over B and T is (3, H, D): the bias layout, one reduction pass.
  auto dbias = has_bias ? g.sum({1, 3}).reshape({3 * C}) : at::empty({0}, weight.options());
  return {dx, dweight, dbias};
}

}  // namespace
#endif

std::string qkv_projection_unsupported(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t n_head) {
  check_qkv_projection_args(x, weight, bias, n_head);
  if (x.device().is_cpu()) return "";
#ifdef FASTGPT_WITH_CUDA
  if (!x.is_cuda()) return "fastgpt._C runs on cpu and cuda tensors";
  if (!uses_kernels(x)) return "";
  const c10::cuda::CUDAGuard guard(x.device());
  // Strides and alignment as kernel_ready() leaves them: copies fix those, not the shape.
  auto p = problem(x, n_head);
  p.x_stride_b = x.size(1) * x.size(2), p.x_stride_t = x.size(2);
  return gemm::qkv_unsupported(p, device_info().family, nullptr);
#else
  return "fastgpt._C was built without its CUDA part (FASTGPT_SKIP_CUDA_BUILD or no nvcc)";
#endif
}

}  // namespace fastgpt

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
