// fastgpt's CUTLASS GEMMs, seen from the torch side: plain launch functions and the problem
// descriptions they take. Neither torch nor CUTLASS headers appear here, so the torch bindings
// (.cpp) and the CUTLASS translation units (gemm_*.cu) compile separately; one unit with both
// costs minutes and gigabytes more.
//
// Every launch function runs on the given stream and throws std::runtime_error with a message
// naming what is wrong; the caller has checked shapes and dtypes against the op's contract and
// asked supported() first.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

typedef struct CUstream_st* cudaStream_t;

namespace fastgpt::gemm {

enum class DType { f16, bf16 };
enum class Gelu { erf, tanh };  // nanoGPT's exact nn.GELU(); GPT-2's tanh approximation

// The fused QKV projection y = x W^T + b stored as heads, and its two backward GEMMs.
//   x    (B, T, C), strides (x_stride_b, x_stride_t, 1)
//   w    (3C, C) contiguous;  bias (3C) or null
//   out  (3, B, H, T, D) contiguous, D = C / H: out[s, b, h, t, d] = y[b, t, s*C + h*D + d]
//   grad (3, B, H, T, D) contiguous (the gradient of out)
//   dx   (B, T, C) contiguous;  dw (3C, C) contiguous
struct QkvProblem {
  int B, T, C, H;
  int64_t x_stride_b, x_stride_t;
  DType dtype;
};

// c_fc with bias and GELU: pre = x W^T + b and y = gelu(pre), both (M, N) row-major.
//   x (M, K) with row stride x_stride (unit stride along K); w (N, K) contiguous; bias (N) or null
struct FcProblem {
  int64_t M;
  int N, K;
  int64_t x_stride;
  DType dtype;
  Gelu gelu;
};

// The architecture family whose kernels serve a device of compute capability major.minor:
// 90 for Hopper (sm_90a: TMA + wgmma), 80 for every other GPU from Ampere on (sm_80 SASS, or the
// compute_80 PTX JIT-compiled on newer GPUs), 0 for older GPUs.
int kernel_family(int major, int minor);

// "" when the kernels' shape and alignment contract holds for the problem (x 16-byte aligned;
// null skips that check), else what is wrong.
std::string qkv_shape_unsupported(const QkvProblem& p, const void* x);
std::string fc_shape_unsupported(const FcProblem& p, const void* x);
// The same, then whether this build has device code for `family` on the current device.
std::string qkv_unsupported(const QkvProblem& p, int family, const void* x);
std::string fc_unsupported(const FcProblem& p, int family, const void* x);

void qkv_forward(const QkvProblem& p, int family, int sm_count, const void* x, const void* w, const void* bias,
                 void* out, cudaStream_t stream);
void qkv_backward_dx(const QkvProblem& p, int family, int sm_count, const void* grad, const void* w, void* dx,
                     cudaStream_t stream);
void qkv_backward_dw(const QkvProblem& p, int family, int sm_count, const void* grad, const void* x, void* dw,
                     cudaStream_t stream);
void fc_forward(const FcProblem& p, int family, int sm_count, const void* x, const void* w, const void* bias, void* y,
                void* pre, cudaStream_t stream);

// The MLP's backward through its GELU (fastgpt::mlp): the dGELU in the epilogue of the GEMM
// that produces its input, c_proj's dx GEMM, which reads pre there:
//   dpre(m, n) = gelu'(pre(m, n)) * sum_k grad(m, k) w_proj(k, n)
// with the FcProblem read as: M rows, N = c_fc's out features (4C), K = c_proj's out features
// (C), x_stride the row stride of grad (M, K) (unit stride along K); w_proj (K, N) contiguous
// (nanoGPT's c_proj.weight); pre, dpre (M, N) contiguous, 16-byte aligned.
void fc_dgelu(const FcProblem& p, int family, int sm_count, const void* grad, const void* w_proj, const void* pre,
              void* dpre, cudaStream_t stream);

// ---- host-side views of the kernels, for the tests (no GPU needed) ----

// One TMA descriptor as a Hopper kernel's host code encodes it (cuTensorMapEncodeTiled's
// arguments): dims and box innermost first, byte strides of dims 1.., the element size.
struct TmaRecord {
  std::vector<uint64_t> dims, strides;
  std::vector<uint32_t> box;
  uint64_t address;
  int element_bytes;
};

// What a Hopper launcher would launch, computed on the host with the kernel's own types and
// stand-in pointers (a 0x100000, b 0x200000, bias 0x300000, d 0x400000, aux 0x500000).
struct KernelPlan {
  std::string name;            // the kernel's tag, also in its SASS name
  std::vector<TmaRecord> tma;  // the descriptors in its Params, in the order encoded
  int grid[3], block, smem;
};

// Every global access an Ampere-path kernel would make for the chosen CTAs, evaluated on the
// host with the kernel's own partitioning code (same stand-in pointers), one row each:
//   loads  (operand 0=A 1=B, cta m or n, batch, k tile, smem row, smem k, global row, global k,
//           element in range, vector predicate, element offset)
//   stores (cta m, cta n, batch, tile row, tile col, global row, global col, in range, offset)
// Global coordinates of a nested mode are flattened column-major over its shape.
struct Sm80Trace {
  static constexpr int kLoadCols = 11, kStoreCols = 9;
  std::vector<int64_t> loads, stores;
};

// kind: "qkv_fwd", "qkv_dx", "qkv_dw". ctas: (m, n, batch) tile triples; empty for all.
// k_edges: loads of the first two and last two k-tiles only (for huge K).
KernelPlan qkv_plan_sm90(const QkvProblem& p, const std::string& kind);
KernelPlan fc_plan_sm90(const FcProblem& p);
KernelPlan fc_dgelu_plan_sm90(const FcProblem& p);
// The Hopper forward's bias loads, rows of (N tile, column in tile, column exists, bias element,
// output column), output columns flattened over (D, H, 3) like W's rows.
std::vector<int64_t> qkv_bias_plan_sm90(const QkvProblem& p);
Sm80Trace qkv_trace_sm80(const QkvProblem& p, const std::string& kind, const std::vector<int>& ctas, bool k_edges);
Sm80Trace fc_trace_sm80(const FcProblem& p, const std::vector<int>& ctas, bool k_edges);
Sm80Trace fc_dgelu_trace_sm80(const FcProblem& p, const std::vector<int>& ctas, bool k_edges);

// The tags of every kernel of a family in this build.
std::vector<std::string> kernel_names(int family);

}  // namespace fastgpt::gemm
