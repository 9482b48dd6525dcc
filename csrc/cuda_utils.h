// Helpers shared by the ops' CUDA bindings (.cpp files, compiled with FASTGPT_WITH_CUDA only).
#pragma once
// (c10's CUDA headers, not ATen/cuda/CUDAContext.h: that one needs the cuSPARSE and cuBLAS
// headers, which a plain CUDA toolkit install may lack.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "gemm.h"

namespace fastgpt {

// The gemm.h dtype of an fp16/bf16 tensor.
inline gemm::DType gemm_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? gemm::DType::f16 : gemm::DType::bf16;
}

// The kernel family and SM count of the current device.
struct DeviceInfo {
  int family, sm_count;
};
inline DeviceInfo device_info() {
  const int device = c10::cuda::current_device();
  int major = 0, minor = 0, sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  return {gemm::kernel_family(major, minor), sm_count};
}

inline bool aligned16(const at::Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15) == 0; }

// t itself when its last dim is contiguous, its other strides are multiples of 8 elements and
// it is 16-byte aligned (what the kernels' TMA / cp.async loads need), else a contiguous copy.
inline at::Tensor kernel_ready(const at::Tensor& t) {
  bool ok = t.numel() == 0 || (t.stride(-1) == 1 && aligned16(t));
  for (int64_t d = 0; ok && d + 1 < t.dim(); ++d) ok = t.size(d) == 1 || t.stride(d) % 8 == 0;
  if (ok) return t;
  at::Tensor c = t.contiguous();
  return c.data_ptr() == t.data_ptr() ? t.clone(at::MemoryFormat::Contiguous) : c;
}

// Runs f, turning the launchers' std::invalid_argument / runtime_error into torch errors.
template <class F>
void run_gemm(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, e.what());
  }
}

}  // namespace fastgpt
