// The Python module fastgpt._C and the schema of every fastgpt operator. Each op registers its
// implementations (TORCH_LIBRARY_IMPL) in its own file; importing this module runs them all.
#include <torch/extension.h>

#include "linear_bias_gelu.h"
#include "qkv_projection.h"
#ifdef FASTGPT_WITH_CUDA
#include "gemm.h"
#endif

TORCH_LIBRARY(fastgpt, m) {
  m.def("qkv_projection(Tensor x, Tensor weight, Tensor? bias, int n_head) -> Tensor");
  m.def("qkv_projection_backward(Tensor grad, Tensor x, Tensor weight, bool has_bias) -> (Tensor, Tensor, Tensor)");
  m.def("linear_bias_gelu(Tensor x, Tensor weight, Tensor? bias, str approximate) -> (Tensor, Tensor)");
  m.def(
      "linear_bias_gelu_backward(Tensor grad, Tensor x, Tensor weight, Tensor pre, bool has_bias, str approximate)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "mlp(Tensor x, Tensor fc_weight, Tensor? fc_bias, Tensor proj_weight, Tensor? proj_bias, str approximate)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "mlp_backward(Tensor grad, Tensor x, Tensor fc_weight, Tensor pre, Tensor act, Tensor proj_weight,"
      " bool fc_has_bias, bool proj_has_bias, str approximate) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

#ifdef FASTGPT_WITH_CUDA
namespace {

namespace gemm = fastgpt::gemm;

gemm::DType dtype_of(const std::string& name) {
  if (name == "float16") return gemm::DType::f16;
  if (name == "bfloat16") return gemm::DType::bf16;
  throw std::invalid_argument("dtype must be 'float16' or 'bfloat16', got '" + name + "'");
}

py::dict plan_dict(const gemm::KernelPlan& plan) {
  py::list tma;
  for (const auto& r : plan.tma)
    tma.append(py::dict(py::arg("dims") = r.dims, py::arg("strides") = r.strides, py::arg("box") = r.box,
                        py::arg("address") = r.address, py::arg("element_bytes") = r.element_bytes));
  return py::dict(py::arg("name") = plan.name, py::arg("tma") = tma,
                  py::arg("grid") = std::vector<int>(plan.grid, plan.grid + 3), py::arg("block") = plan.block,
                  py::arg("smem") = plan.smem);
}

py::tuple trace_tensors(gemm::Sm80Trace&& t) {
  auto as_tensor = [](std::vector<int64_t>& v, int cols) {
    return torch::tensor(v, torch::kInt64).view({-1, cols});
  };
  return py::make_tuple(as_tensor(t.loads, gemm::Sm80Trace::kLoadCols),
                        as_tensor(t.stores, gemm::Sm80Trace::kStoreCols));
}

gemm::QkvProblem qkv_problem(int B, int T, int C, int H, int64_t sb, int64_t st, const std::string& dtype) {
  return {B, T, C, H, sb, st, dtype_of(dtype)};
}
gemm::FcProblem fc_problem(int64_t M, int N, int K, int64_t ld, const std::string& dtype, const std::string& approx) {
  return {M, N, K, ld, dtype_of(dtype), approx == "tanh" ? gemm::Gelu::tanh : gemm::Gelu::erf};
}

}  // namespace
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgpt's C++/CUDA operators, registered under torch.ops.fastgpt";
#ifdef FASTGPT_WITH_CUDA
  m.def("cuda_built", []() { return true; }, "whether the CUDA sources were compiled into this build");
#else
  m.def("cuda_built", []() { return false; }, "whether the CUDA sources were compiled into this build");
#endif
  m.def("qkv_projection_unsupported", &fastgpt::qkv_projection_unsupported,
        "'' when the cuda backend runs this qkv_projection call, else why not");
  m.def("linear_bias_gelu_unsupported", &fastgpt::linear_bias_gelu_unsupported,
        "'' when the cuda backend runs this linear_bias_gelu call, else why not");
  m.def("mlp_unsupported", &fastgpt::mlp_unsupported, "'' when the cuda backend runs this mlp call, else why not");
#ifdef FASTGPT_WITH_CUDA
  // Host-side views of the CUTLASS kernels for the tests (no GPU needed): see gemm.h.
  m.def("_kernel_names", &gemm::kernel_names, "the tags of a family's (90 or 80) kernels in this build");
  m.def(
      "_qkv_shape_unsupported",
      [](int B, int T, int C, int H, int64_t sb, int64_t st, const std::string& dtype, uint64_t x) {
        return gemm::qkv_shape_unsupported(qkv_problem(B, T, C, H, sb, st, dtype), reinterpret_cast<const void*>(x));
      },
      "the QKV kernels' shape and alignment contract: '' or what is wrong");
  m.def(
      "_fc_shape_unsupported",
      [](int64_t M, int N, int K, int64_t ld, const std::string& dtype, uint64_t x) {
        return gemm::fc_shape_unsupported(fc_problem(M, N, K, ld, dtype, "none"), reinterpret_cast<const void*>(x));
      },
      "the c_fc kernel's shape and alignment contract: '' or what is wrong");
  m.def(
      "_qkv_plan_sm90",
      [](const std::string& kind, int B, int T, int C, int H, int64_t sb, int64_t st, const std::string& dtype) {
        return plan_dict(gemm::qkv_plan_sm90(qkv_problem(B, T, C, H, sb, st, dtype), kind));
      },
      "the launch and TMA descriptors of a Hopper QKV GEMM ('qkv_fwd', 'qkv_dx', 'qkv_dw')");
  m.def(
      "_qkv_bias_plan_sm90",
      [](int B, int T, int C, int H) {
        auto rows = gemm::qkv_bias_plan_sm90(qkv_problem(B, T, C, H, int64_t(T) * C, C, "bfloat16"));
        return torch::tensor(rows, torch::kInt64).view({-1, 5});
      },
      "(N tile, column, exists, bias element, output column) of the Hopper QKV forward's bias node");
  m.def(
      "_fc_plan_sm90",
      [](int64_t M, int N, int K, int64_t ld, const std::string& dtype, const std::string& approx) {
        return plan_dict(gemm::fc_plan_sm90(fc_problem(M, N, K, ld, dtype, approx)));
      },
      "the launch and TMA descriptors of the Hopper c_fc GEMM");
  m.def(
      "_fc_dgelu_plan_sm90",
      [](int64_t M, int N, int K, int64_t ld, const std::string& dtype, const std::string& approx) {
        return plan_dict(gemm::fc_dgelu_plan_sm90(fc_problem(M, N, K, ld, dtype, approx)));
      },
      "the launch and TMA descriptors of the Hopper dGELU GEMM (the MLP backward's c_proj dx)");
  m.def(
      "_qkv_trace_sm80",
      [](const std::string& kind, int B, int T, int C, int H, int64_t sb, int64_t st, const std::string& dtype,
         const std::vector<int>& ctas, bool k_edges) {
        return trace_tensors(gemm::qkv_trace_sm80(qkv_problem(B, T, C, H, sb, st, dtype), kind, ctas, k_edges));
      },
      "(loads, stores): every global access of an Ampere-path QKV GEMM's chosen CTAs");
  m.def(
      "_fc_trace_sm80",
      [](int64_t M, int N, int K, int64_t ld, const std::string& dtype, const std::string& approx,
         const std::vector<int>& ctas, bool k_edges) {
        return trace_tensors(gemm::fc_trace_sm80(fc_problem(M, N, K, ld, dtype, approx), ctas, k_edges));
      },
      "(loads, stores): every global access of the Ampere-path c_fc GEMM's chosen CTAs");
  m.def(
      "_fc_dgelu_trace_sm80",
      [](int64_t M, int N, int K, int64_t ld, const std::string& dtype, const std::string& approx,
         const std::vector<int>& ctas, bool k_edges) {
        return trace_tensors(gemm::fc_dgelu_trace_sm80(fc_problem(M, N, K, ld, dtype, approx), ctas, k_edges));
      },
      "(loads, stores): every global access of the Ampere-path dGELU GEMM's chosen CTAs");
#endif
}
