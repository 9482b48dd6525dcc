// Argument checks and device implementations of fastgpt::linear_bias_gelu and fastgpt::mlp
// (schemas in module.cpp; see linear_bias_gelu.h). The CPU twins are here; the CUDA GEMMs in
// gemm_*.cu.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
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

void check_mlp_args(const at::Tensor& x, const at::Tensor& fc_weight, const std::optional<at::Tensor>& fc_bias,
                    const at::Tensor& proj_weight, const std::optional<at::Tensor>& proj_bias,
                    c10::string_view approximate) {
  check_linear_bias_gelu_args(x, fc_weight, fc_bias, approximate);
  const int64_t N = fc_weight.size(0);
  TORCH_CHECK(proj_weight.dim() == 2 && proj_weight.size(1) == N, "mlp: proj_weight must be (C_out, ", N,
              ") for fc_weight of shape ", fc_weight.sizes(), ", got ", proj_weight.sizes());
  TORCH_CHECK(proj_weight.scalar_type() == x.scalar_type() && proj_weight.device() == x.device(),
              "mlp: proj_weight must have x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
              proj_weight.scalar_type(), ", ", proj_weight.device());
  if (proj_bias.has_value() && proj_bias->defined()) {
    TORCH_CHECK(proj_bias->dim() == 1 && proj_bias->size(0) == proj_weight.size(0), "mlp: proj_bias must be (",
                proj_weight.size(0), ",), got ", proj_bias->sizes());
    TORCH_CHECK(proj_bias->scalar_type() == x.scalar_type() && proj_bias->device() == x.device(),
                "mlp: proj_bias must have x's dtype and device");
  }
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

// ---- fastgpt::mlp: c_proj(gelu(c_fc(x))), the boundary that lets the backward put the dGELU
// into the epilogue of c_proj's dx GEMM (linear_bias_gelu.h) ----

std::optional<at::Tensor> defined_or_none(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t : std::nullopt;
}

// The forward on any device: linear_bias_gelu through the dispatcher (the CUTLASS GEMM on
// CUDA, the C++ twin on CPU), then c_proj (ATen: cuBLAS on CUDA).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward(const at::Tensor& x, const at::Tensor& fc_weight,
                                                           const std::optional<at::Tensor>& fc_bias,
                                                           const at::Tensor& proj_weight,
                                                           const std::optional<at::Tensor>& proj_bias,
                                                           c10::string_view approximate) {
  check_mlp_args(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate);
  static auto fc = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgpt::linear_bias_gelu", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, c10::string_view)>();
  auto [act, pre] = fc.call(x, fc_weight, fc_bias, approximate);
  auto y = affine(rows_of(act), proj_weight, defined_or_none(proj_bias));
  return {y.view(out_shape(x, proj_weight.size(0))), pre, act};
}

void check_mlp_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& fc_weight,
                        const at::Tensor& pre, const at::Tensor& act, const at::Tensor& proj_weight,
                        c10::string_view approximate) {
  check_mlp_args(x, fc_weight, std::nullopt, proj_weight, std::nullopt, approximate);
  check_backward(act, x, fc_weight, pre);
  const auto shape = out_shape(x, proj_weight.size(0));
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape) && grad.scalar_type() == x.scalar_type(),
              "mlp_backward: grad must be ", at::IntArrayRef(shape), " in ", x.scalar_type(), ", got ", grad.sizes(),
              " in ", grad.scalar_type());
}

// Everything but dpre and the c_fc bias gradient, given those: c_proj's dweight and dbias from
// grad and act, c_fc's dx and dweight from dpre.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_gradients(
    const at::Tensor& g2, const at::Tensor& x, const at::Tensor& fc_weight, const at::Tensor& act,
    const at::Tensor& dpre, at::Tensor dfc_bias, bool proj_has_bias) {
  auto [dx, dfc_w, dfc_b] = backward_gemms(dpre, x, fc_weight, std::move(dfc_bias));
  auto dproj_w = at::mm(g2.t(), rows_of(act));
  auto dproj_b = proj_has_bias ? g2.sum(0) : no_bias(dproj_w);
  return {dx, dfc_w, dfc_b, dproj_w, dproj_b};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& fc_weight, const at::Tensor& pre,
    const at::Tensor& act, const at::Tensor& proj_weight, bool fc_has_bias, bool proj_has_bias,
    c10::string_view approximate) {
  check_mlp_backward(grad, x, fc_weight, pre, act, proj_weight, approximate);
  const auto g2 = rows_of(grad);
  const auto dact = at::mm(g2, proj_weight);  // c_proj's dx
  auto dpre = is_tanh(approximate)
                  ? cpu_elementwise(dact, rows_of(pre), [](float g, float v) { return g * gemm::GeluTanh::grad(v); })
                  : cpu_elementwise(dact, rows_of(pre), [](float g, float v) { return g * gemm::GeluErf::grad(v); });
  return mlp_gradients(g2, x, fc_weight, act, dpre, fc_has_bias ? dpre.sum(0) : no_bias(fc_weight), proj_has_bias);
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

// dpre = gelu'(pre) * (grad @ proj_weight) in one CUTLASS GEMM whose epilogue reads pre and
// applies the dGELU (gemm.h: fc_dgelu); c_fc's bias gradient is one fp32 column-sum pass over
// dpre. fp32 and shapes outside the kernels' contract take cuBLAS and ATen's gelu_backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& fc_weight, const at::Tensor& pre,
    const at::Tensor& act, const at::Tensor& proj_weight, bool fc_has_bias, bool proj_has_bias,
    c10::string_view approximate) {
  check_mlp_backward(grad, x, fc_weight, pre, act, proj_weight, approximate);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto g2 = kernel_ready(rows_of(grad)), p2 = rows_of(pre).contiguous(), wp = proj_weight.contiguous();
  const int64_t rows = g2.size(0), N = p2.size(1), K = g2.size(1);
  const auto dev = device_info();
  const gemm::FcProblem prob{rows, int(N), int(K), rows == 1 ? K : g2.stride(0), gemm_dtype(x),
                             is_tanh(approximate) ? gemm::Gelu::tanh : gemm::Gelu::erf};
  const bool kernel = uses_kernels(x) && rows > 0 && N > 0 && K > 0 && aligned16(p2) && aligned16(wp) &&
                      gemm::fc_unsupported(prob, dev.family, g2.data_ptr()).empty();
  at::Tensor dpre;
  if (kernel) {
    dpre = at::empty({rows, N}, x.options());
    run_gemm([&] {
      gemm::fc_dgelu(prob, dev.family, dev.sm_count, g2.data_ptr(), wp.data_ptr(), p2.data_ptr(), dpre.data_ptr(),
                     c10::cuda::getCurrentCUDAStream());
    });
  } else {
    dpre = at::gelu_backward(at::mm(g2, wp), p2, approximate);
  }
  auto dfc_b = fc_has_bias ? dpre.sum(0, false, at::kFloat).to(x.scalar_type()) : no_bias(fc_weight);
  return mlp_gradients(g2, x, fc_weight, act, dpre, std::move(dfc_b), proj_has_bias);
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

std::string mlp_unsupported(const at::Tensor& x, const at::Tensor& fc_weight, const std::optional<at::Tensor>& fc_bias,
                            const at::Tensor& proj_weight, const std::optional<at::Tensor>& proj_bias,
                            c10::string_view approximate) {
  check_mlp_args(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate);
  return linear_bias_gelu_unsupported(x, fc_weight, fc_bias, approximate);  // the dGELU GEMM has the same contract
}

}  // namespace fastgpt

TORCH_LIBRARY_IMPL(fastgpt, CPU, m) {
  m.impl("linear_bias_gelu", &fastgpt::linear_bias_gelu_cpu);
  m.impl("linear_bias_gelu_backward", &fastgpt::linear_bias_gelu_backward_cpu);
  m.impl("mlp", &fastgpt::mlp_forward);
  m.impl("mlp_backward", &fastgpt::mlp_backward_cpu);
}

#ifdef FASTGPT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastgpt, CUDA, m) {
  m.impl("linear_bias_gelu", &fastgpt::linear_bias_gelu_cuda);
  m.impl("linear_bias_gelu_backward", &fastgpt::linear_bias_gelu_backward_cuda);
  m.impl("mlp", &fastgpt::mlp_forward);
  m.impl("mlp_backward", &fastgpt::mlp_backward_cuda);
}
#endif
