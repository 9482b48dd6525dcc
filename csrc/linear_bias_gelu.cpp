// Argument checks and device implementations of fastgpt::linear_bias_gelu (schema in
// module.cpp; see linear_bias_gelu.h). The CPU twin is here; the CUDA GEMM in gemm_*.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gelu.cuh"
#include "linear_bias_gelu.h"
#ifdef FASTGPT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "cuda_utils.h"
#include "gelu_backward.h"
#endif

namespace fastgpt {

void check_linear_bias_gelu_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::string_view approximate) {
  TORCH_CHECK(x.dim() >= 1, "linear_bias_gelu: x must have at least 1 dim, got a 0-d tensor");
  TORCH_CHECK(x.is_floating_point(), "linear_bias_gelu: x must be float32, float16 or bfloat16, got ",
              x.scalar_type());
  const int64_t K = x.size(-1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K, "linear_bias_gelu: weight must be (N, ", K,
              ") for x of shape ", x.sizes(), ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "linear_bias_gelu: weight dtype ", weight.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "linear_bias_gelu: weight is on ", weight.device(), " but x is on ",
              x.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "linear_bias_gelu: bias must be (",
                weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "linear_bias_gelu: bias dtype ", bias->scalar_type(),
                " must equal x dtype ", x.scalar_type());
    TORCH_CHECK(bias->device() == x.device(), "linear_bias_gelu: bias is on ", bias->device(), " but x is on ",
                x.device());
  }
  TORCH_CHECK(approximate == "none" || approximate == "tanh",
              "linear_bias_gelu: approximate must be 'none' (exact erf) or 'tanh', got '", approximate, "'");
}

namespace {

bool is_tanh(c10::string_view approximate) { return approximate == "tanh"; }

// x as the (rows, K) matrix of its leading dims.
at::Tensor rows_of(const at::Tensor& x) {
  const int64_t K = x.size(-1);
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return x.reshape({rows, K});
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  auto shape = x.sizes().vec();
  shape.back() = N;
  return shape;
}

// pre = x2d @ weight^T + bias as a (rows, N) tensor, on any device (ATen).
at::Tensor affine(const at::Tensor& x2d, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return bias.has_value() && bias->defined() ? at::addmm(*bias, x2d, weight.t()) : at::mm(x2d, weight.t());
}

// out[i] = f(a[i], b[i]) in fp32 over two same-shaped CPU tensors, result in a's dtype.
template <class F>
at::Tensor cpu_elementwise(const at::Tensor& a, const at::Tensor& b, F f) {
  const auto af = a.to(at::kFloat).contiguous(), bf = b.to(at::kFloat).contiguous();
  auto out = at::empty_like(af);
  const float *ap = af.data_ptr<float>(), *bp = bf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, af.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) op[i] = f(ap[i], bp[i]);
  });
  return out.to(a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> linear_bias_gelu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        c10::string_view approximate) {
  check_linear_bias_gelu_args(x, weight, bias, approximate);
  const int64_t N = weight.size(0);
  auto pre = affine(rows_of(x), weight, bias);
  auto y = is_tanh(approximate) ? cpu_elementwise(pre, pre, [](float v, float) { return gemm::GeluTanh{}(v); })
                                : cpu_elementwise(pre, pre, [](float v, float) { return gemm::GeluErf{}(v); });
  return {y.view(out_shape(x, N)), pre.view(out_shape(x, N))};
}

// dx = dpre @ weight and dweight = dpre^T @ x (ATen: cuBLAS on CUDA), with dbias as given.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_gemms(const at::Tensor& dpre, const at::Tensor& x,
                                                              const at::Tensor& weight, at::Tensor dbias) {
  const auto d2 = rows_of(dpre), x2d = rows_of(x);
  return {at::mm(d2, weight).view(x.sizes()), at::mm(d2.t(), x2d), std::move(dbias)};
}

at::Tensor no_bias(const at::Tensor& weight) { return at::empty({0}, weight.options()); }

void check_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre) {
  const auto shape = out_shape(x, weight.size(0));
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape) && pre.sizes() == at::IntArrayRef(shape),
              "linear_bias_gelu_backward: grad and pre must be ", at::IntArrayRef(shape), ", got ", grad.sizes(),
              " and ", pre.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && pre.scalar_type() == x.scalar_type(),
              "linear_bias_gelu_backward: grad and pre must have x's dtype ", x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bias_gelu_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre, bool has_bias,
    c10::string_view approximate) {
  check_linear_bias_gelu_args(x, weight, std::nullopt, approximate);
  check_backward(grad, x, weight, pre);
  auto dpre = is_tanh(approximate)
                  ? cpu_elementwise(grad, pre, [](float g, float v) { return g * gemm::GeluTanh::grad(v); })
                  : cpu_elementwise(grad, pre, [](float g, float v) { return g * gemm::GeluErf::grad(v); });
  return backward_gemms(dpre, x, weight, has_bias ? rows_of(dpre).sum(0) : no_bias(weight));
}

#ifdef FASTGPT_WITH_CUDA
bool uses_kernels(const at::Tensor& x) { return x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16; }

gemm::FcProblem problem(const at::Tensor& x2d, const at::Tensor& weight, c10::string_view approximate) {
  const int64_t row_stride = x2d.size(0) == 1 ? x2d.size(1) : x2d.stride(0);  // any stride serves one row
  return {x2d.size(0),  int(weight.size(0)), int(weight.size(1)),
          row_stride,   gemm_dtype(x2d),     is_tanh(approximate) ? gemm::Gelu::tanh : gemm::Gelu::erf};
}

std::tuple<at::Tensor, at::Tensor> linear_bias_gelu_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& bias,
                                                         c10::string_view approximate) {
  check_linear_bias_gelu_args(x, weight, bias, approximate);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = weight.size(0);
  if (!uses_kernels(x)) {  // fp32: cuBLAS and ATen's GELU
    auto pre = affine(rows_of(x), weight, bias);
    return {at::gelu(pre, approximate).view(out_shape(x, N)), pre.view(out_shape(x, N))};
  }
  const auto x2d = kernel_ready(rows_of(x)), w = kernel_ready(weight);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = kernel_ready(*bias);
  auto y = at::empty({x2d.size(0), N}, x.options()), pre = at::empty_like(y);
  if (y.numel() > 0) {
    if (x2d.size(1) == 0) {  // no reduction: pre is the bias alone
      pre.copy_(b ? b->expand_as(pre) : at::zeros_like(pre));
      y = at::gelu(pre, approximate);
    } else {
      const auto dev = device_info();
      run_gemm([&] {
        gemm::fc_forward(problem(x2d, w, approximate), dev.family, dev.sm_count, x2d.data_ptr(), w.data_ptr(),
                         b ? b->data_ptr() : nullptr, y.data_ptr(), pre.data_ptr(), c10::cuda::getCurrentCUDAStream());
      });
    }
  }
  return {y.view(out_shape(x, N)), pre.view(out_shape(x, N))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bias_gelu_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre, bool has_bias,
    c10::string_view approximate) {
  check_linear_bias_gelu_args(x, weight, std::nullopt, approximate);
  check_backward(grad, x, weight, pre);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto g = rows_of(grad).contiguous(), p = rows_of(pre).contiguous();
  const int64_t rows = g.size(0), N = g.size(1);
  if (!uses_kernels(x) || N % 8 != 0 || !aligned16(g) || !aligned16(p)) {  // fp32, or no 16-byte rows
    auto dpre = at::gelu_backward(g, p, approximate);
    return backward_gemms(dpre, x, weight, has_bias ? dpre.sum(0) : no_bias(weight));
  }
  auto dpre = at::empty_like(g);
  at::Tensor partial;  // per row block, the column sums of dpre: the bias gradient in one pass
  if (has_bias) partial = at::empty({gemm::gelu_backward_row_blocks(rows, int(N)), N}, g.options().dtype(at::kFloat));
  run_gemm([&] {
    gemm::gelu_backward(gemm_dtype(g), is_tanh(approximate) ? gemm::Gelu::tanh : gemm::Gelu::erf, rows, int(N),
                        g.data_ptr(), p.data_ptr(), dpre.data_ptr(), has_bias ? partial.data_ptr<float>() : nullptr,
                        c10::cuda::getCurrentCUDAStream());
  });
  return backward_gemms(dpre, x, weight, has_bias ? partial.sum(0).to(x.scalar_type()) : no_bias(weight));
}
#endif

}  // namespace

std::string linear_bias_gelu_unsupported(const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, c10::string_view approximate) {
  check_linear_bias_gelu_args(x, weight, bias, approximate);
  if (x.device().is_cpu()) return "";
#ifdef FASTGPT_WITH_CUDA
  if (!x.is_cuda()) return "fastgpt._C runs on cpu and cuda tensors";
  if (!uses_kernels(x)) return "";
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1);
  gemm::FcProblem p{x.numel() / std::max<int64_t>(K, 1), int(weight.size(0)), int(K), K, gemm_dtype(x),
                    is_tanh(approximate) ? gemm::Gelu::tanh : gemm::Gelu::erf};
  return gemm::fc_unsupported(p, device_info().family, nullptr);
#else
  return "fastgpt._C was built without its CUDA part (FASTGPT_SKIP_CUDA_BUILD or no nvcc)";
#endif
}

}  // namespace fastgpt

TORCH_LIBRARY_IMPL(fastgpt, CPU, m) {
  m.impl("linear_bias_gelu", &fastgpt::linear_bias_gelu_cpu);
  m.impl("linear_bias_gelu_backward", &fastgpt::linear_bias_gelu_backward_cpu);
}

#ifdef FASTGPT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastgpt, CUDA, m) {
  m.impl("linear_bias_gelu", &fastgpt::linear_bias_gelu_cuda);
  m.impl("linear_bias_gelu_backward", &fastgpt::linear_bias_gelu_backward_cuda);
}
#endif
