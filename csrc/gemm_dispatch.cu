// gemm.h's launchers: the shape/alignment contract of the kernels, and the choice of the
// architecture family's kernels for the current device. No CUTLASS here (it compiles in seconds).
#include <cuda_runtime.h>

#include <mutex>
#include <stdexcept>

#include "gemm_families.h"

namespace fastgpt::gemm {
namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Device code presence per family, checked once per process (the answer depends only on the
// build and on the device's architecture, and a process sees one architecture in practice).
std::string code_missing(int family) {
  static std::once_flag once90, once80;
  static std::string missing90, missing80;
  if (family == 90) {
    std::call_once(once90, [] { missing90 = sm90::device_code_missing(); });
    return missing90;
  }
  std::call_once(once80, [] { missing80 = sm80::device_code_missing(); });
  return missing80;
}

std::string family_missing(int family) {
  if (family == 0) return "the CUTLASS kernels need an Ampere (sm_80) or newer GPU";
  return code_missing(family);
}

void require(const std::string& why, const char* op) {
  if (!why.empty()) throw std::invalid_argument(std::string(op) + ": " + why);
}

}  // namespace

int kernel_family(int major, int minor) {
  if (major == 9 && minor == 0) return 90;
  return major >= 8 ? 80 : 0;
}

std::string qkv_shape_unsupported(const QkvProblem& p, const void* x) {
  const int D = p.H > 0 ? p.C / p.H : 0;
  if (p.H <= 0 || p.C % p.H != 0) return "n_head must divide C";
  if (D % 8 != 0)
    return "the head dim C / n_head = " + std::to_string(D) +
           " must be a multiple of 8 (16-byte rows for TMA and cp.async)";
  if (p.x_stride_t % 8 != 0 || p.x_stride_b % 8 != 0 || !aligned16(x))
    return "x must be 16-byte aligned with strides that are multiples of 8 elements";
  if (int64_t(p.B) * p.T * p.C * 3 >= (int64_t(1) << 39))
    return "3*B*T*C must stay below 2^39 elements (TMA byte strides are 40-bit)";
  return "";
}

std::string fc_shape_unsupported(const FcProblem& p, const void* x) {
  if (p.K % 8 != 0 || p.N % 8 != 0)
    return "in and out features (" + std::to_string(p.K) + ", " + std::to_string(p.N) +
           ") must be multiples of 8 (16-byte rows)";
  if (p.x_stride % 8 != 0 || !aligned16(x)) return "x must be 16-byte aligned with a row stride of 8k elements";
  if (p.M >= (int64_t(1) << 31)) return "more than 2^31 - 1 rows";
  if (p.M * p.N >= (int64_t(1) << 39)) return "rows * out features must stay below 2^39 elements";
  return "";
}

std::string qkv_unsupported(const QkvProblem& p, int family, const void* x) {
  const std::string why = qkv_shape_unsupported(p, x);
  return why.empty() ? family_missing(family) : why;
}

std::string fc_unsupported(const FcProblem& p, int family, const void* x) {
  const std::string why = fc_shape_unsupported(p, x);
  return why.empty() ? family_missing(family) : why;
}

void qkv_forward(const QkvProblem& p, int family, int sm_count, const void* x, const void* w, const void* bias,
                 void* out, cudaStream_t stream) {
  require(qkv_unsupported(p, family, x), "qkv_projection");
  if (family == 90)
    sm90::qkv_forward(p, sm_count, x, w, bias, out, stream);
  else
    sm80::qkv_forward(p, x, w, bias, out, stream);
}

void qkv_backward_dx(const QkvProblem& p, int family, int sm_count, const void* grad, const void* w, void* dx,
                     cudaStream_t stream) {
  require(family_missing(family), "qkv_projection_backward");
  if (family == 90)
    sm90::qkv_backward_dx(p, sm_count, grad, w, dx, stream);
  else
    sm80::qkv_backward_dx(p, grad, w, dx, stream);
}

void qkv_backward_dw(const QkvProblem& p, int family, int sm_count, const void* grad, const void* x, void* dw,
                     cudaStream_t stream) {
  require(qkv_unsupported(p, family, x), "qkv_projection_backward");
  if (family == 90)
    sm90::qkv_backward_dw(p, sm_count, grad, x, dw, stream);
  else
    sm80::qkv_backward_dw(p, grad, x, dw, stream);
}

void fc_forward(const FcProblem& p, int family, int sm_count, const void* x, const void* w, const void* bias, void* y,
                void* pre, cudaStream_t stream) {
  require(fc_unsupported(p, family, x), "linear_bias_gelu");
  if (family == 90)
    sm90::fc_forward(p, sm_count, x, w, bias, y, pre, stream);
  else
    sm80::fc_forward(p, x, w, bias, y, pre, stream);
}

void fc_dgelu(const FcProblem& p, int family, int sm_count, const void* grad, const void* w_proj, const void* pre,
              void* dpre, cudaStream_t stream) {
  require(fc_unsupported(p, family, grad), "mlp_backward");
  if (!aligned16(w_proj) || !aligned16(pre) || !aligned16(dpre))
    throw std::invalid_argument("mlp_backward: c_proj's weight, pre and dpre must be 16-byte aligned");
  if (family == 90)
    sm90::fc_dgelu(p, sm_count, grad, w_proj, pre, dpre, stream);
  else
    sm80::fc_dgelu(p, grad, w_proj, pre, dpre, stream);
}

KernelPlan qkv_plan_sm90(const QkvProblem& p, const std::string& kind) { return sm90::qkv_plan(p, kind); }
KernelPlan fc_plan_sm90(const FcProblem& p) { return sm90::fc_plan(p); }
KernelPlan fc_dgelu_plan_sm90(const FcProblem& p) { return sm90::fc_dgelu_plan(p); }
std::vector<int64_t> qkv_bias_plan_sm90(const QkvProblem& p) { return sm90::qkv_bias_plan(p); }

std::vector<std::string> kernel_names(int family) {
  auto names = family == 90 ? sm90::qkv_kernel_names() : sm80::qkv_kernel_names();
  for (const auto& more : family == 90 ? std::vector{sm90::fc_kernel_names(), sm90::fc_dgelu_kernel_names()}
                                       : std::vector{sm80::fc_kernel_names(), sm80::fc_dgelu_kernel_names()})
    names.insert(names.end(), more.begin(), more.end());
  return names;
}

}  // namespace fastgpt::gemm
