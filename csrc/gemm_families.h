// The per-architecture launchers behind gemm.h's dispatching ones (gemm_dispatch.cu). Plain C++.
#pragma once
#include "gemm.h"

namespace fastgpt::gemm {
namespace sm90 {
void qkv_forward(const QkvProblem& p, int sm_count, const void* x, const void* w, const void* bias, void* out,
                 cudaStream_t stream);
void qkv_backward_dx(const QkvProblem& p, int sm_count, const void* grad, const void* w, void* dx,
                     cudaStream_t stream);
void qkv_backward_dw(const QkvProblem& p, int sm_count, const void* grad, const void* x, void* dw,
                     cudaStream_t stream);
void fc_forward(const FcProblem& p, int sm_count, const void* x, const void* w, const void* bias, void* y, void* pre,
                cudaStream_t stream);
KernelPlan qkv_plan(const QkvProblem& p, const std::string& kind);
void fc_dgelu(const FcProblem& p, int sm_count, const void* grad, const void* w_proj, const void* pre, void* dpre,
              cudaStream_t stream);
KernelPlan fc_plan(const FcProblem& p);
KernelPlan fc_dgelu_plan(const FcProblem& p);
std::vector<int64_t> qkv_bias_plan(const QkvProblem& p);
std::vector<std::string> qkv_kernel_names();
std::vector<std::string> fc_kernel_names();
std::vector<std::string> fc_dgelu_kernel_names();
// "" when this build holds sm_90a code for these kernels on the current device, else why not.
std::string device_code_missing();
}  // namespace sm90

namespace sm80 {
void qkv_forward(const QkvProblem& p, const void* x, const void* w, const void* bias, void* out,
                 cudaStream_t stream);
void qkv_backward_dx(const QkvProblem& p, const void* grad, const void* w, void* dx, cudaStream_t stream);
void qkv_backward_dw(const QkvProblem& p, const void* grad, const void* x, void* dw, cudaStream_t stream);
void fc_forward(const FcProblem& p, const void* x, const void* w, const void* bias, void* y, void* pre,
                cudaStream_t stream);
void fc_dgelu(const FcProblem& p, const void* grad, const void* w_proj, const void* pre, void* dpre,
              cudaStream_t stream);
std::vector<std::string> qkv_kernel_names();
std::vector<std::string> fc_kernel_names();
std::vector<std::string> fc_dgelu_kernel_names();
std::string device_code_missing();
}  // namespace sm80
}  // namespace fastgpt::gemm
