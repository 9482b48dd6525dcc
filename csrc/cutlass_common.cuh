// Included first by every CUTLASS translation unit (gemm_*.cu); no torch headers beside it.
#pragma once

// TMA descriptors: CUTLASS's host code calls cuTensorMapEncodeTiled directly, and this rename
// makes that call land in fastgpt's own function (tma_encode.cu), which forwards to the driver
// or, in the host tests, records the descriptor instead. The driver header must not have been
// seen yet, or the rename would miss its declaration.
#ifdef __cuda_cuda_h__
#error "cutlass_common.cuh must be included before cuda.h"
#endif
#define CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL 1
#define cuTensorMapEncodeTiled fastgpt_tma_encode_tiled
#include <cuda.h>
#include <cudaTypedefs.h>

#include <stdexcept>
#include <string>
#include <vector>

#include <cute/tensor.hpp>

namespace cute {
// CUTLASS's GEMM kernels walk the k tiles with make_coord_iterator(..., shape<3>(gA_mkl)). The
// iterator keeps a reference to the shape it is given, and cute's shape() of a Tensor returns a
// copy, so that reference dangles - and it is read whenever a nested K mode wraps, as in the QKV
// backward GEMMs (K = (D, H, 3) or (T, B)). This more specialized overload returns a reference
// to the tensor's own shape instead, which lives as long as the tensor.
template <int... Is, class Iterator, class Shape, class Stride>
CUTE_HOST_DEVICE constexpr decltype(auto) shape(Tensor<ViewEngine<Iterator>, Layout<Shape, Stride>> const& tensor) {
  return shape<Is...>(tensor.layout());
}
static_assert(std::is_reference_v<decltype(shape<0>(
                  std::declval<Tensor<ViewEngine<int*>, Layout<tuple<int>, tuple<int>>> const&>()))>,
              "the overload above must win over cute's by-value shape(Tensor)");
}  // namespace cute

#include <cutlass/cutlass.h>
#include <cutlass/device_kernel.h>
#include <cutlass/numeric_types.h>

#include "gemm.h"

namespace fastgpt::gemm {

template <DType dt>
using element_t = std::conditional_t<dt == DType::f16, cutlass::half_t, cutlass::bfloat16_t>;

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastgpt CUTLASS GEMM: ") + what + ": " + cudaGetErrorString(err));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// "" when `kernel` has code for the current device compiled for `family` (sm_90a SASS for 90;
// sm_8x SASS or PTX for 80), else why not. A Hopper kernel reached through compute_80 PTX
// would be its trap stub, hence the PTX-version check.
template <class KernelFn>
std::string kernel_code_missing(KernelFn kernel, int family) {
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(kernel));
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky, but clear it for the caller
    return std::string("this build of fastgpt._C has no device code for this GPU (") + cudaGetErrorString(err) +
           "); rebuild with its arch in TORCH_CUDA_ARCH_LIST";
  }
  if (family == 90 && attr.ptxVersion < 90)
    return "this build of fastgpt._C has no sm_90a code; rebuild with 9.0a in TORCH_CUDA_ARCH_LIST";
  return "";
}

// Names a kernel: the tag type appears in the __global__ function's (mangled) name, so the
// SASS tests find each kernel by it.
#define FASTGPT_KERNEL_TAG(tag) \
  struct tag {                  \
    static constexpr const char* name = #tag; \
  }

// The pointers of one GEMM launch: inputs a, b; output d; the epilogue's bias and aux (an
// output, or an input for a backward's dGELU).
struct GemmPointers {
  const void* a;
  const void* b;
  void* d;
  const void* bias = nullptr;
  void* aux = nullptr;
};

// Distinct, 16-byte-aligned stand-ins for host-side plans, which never dereference them.
inline GemmPointers fake_pointers() {
  return {reinterpret_cast<const void*>(0x100000), reinterpret_cast<const void*>(0x200000),
          reinterpret_cast<void*>(0x400000), reinterpret_cast<const void*>(0x300000),
          reinterpret_cast<void*>(0x500000)};
}

// A Kind is one GEMM of an op in both dtypes: Kind::Gemm<Element> its kernel class,
// Kind::TagF16 / TagBF16 its names, Kind::params<Element>(problem, sm_count, pointers) its Params.
template <class Kind, class P>
void launch_kind(const P& p, int sm_count, const GemmPointers& ptr, cudaStream_t stream) {
  if (p.dtype == DType::f16) {
    using G = typename Kind::template Gemm<cutlass::half_t>;
    G::template launch<typename Kind::TagF16>(Kind::template params<cutlass::half_t>(p, sm_count, ptr), stream);
  } else {
    using G = typename Kind::template Gemm<cutlass::bfloat16_t>;
    G::template launch<typename Kind::TagBF16>(Kind::template params<cutlass::bfloat16_t>(p, sm_count, ptr), stream);
  }
}

// The driver's result of the last TMA descriptor encoded on this thread, and a reset of it:
// CUTLASS reports a failed encoding only through assert(), which release builds compile out.
CUresult last_tma_encode_result();
void reset_tma_encode_result();

// While one is alive, TMA descriptors encoded on this thread are recorded into `out` instead of
// reaching the driver (tma_encode.cu): how the host tests see a Hopper kernel's descriptors.
class TmaRecorder {
 public:
  explicit TmaRecorder(std::vector<TmaRecord>* out);
  ~TmaRecorder();
  TmaRecorder(const TmaRecorder&) = delete;
  TmaRecorder& operator=(const TmaRecorder&) = delete;

 private:
  std::vector<TmaRecord>* previous_;
};

// The one __global__ entry of every fastgpt GEMM: Kernel is a CUTLASS kernel class (Params,
// operator()), Tag names it in the SASS. Each kernel exists for one architecture family; in the
// other family's device pass its body is a trap, never reached because launchers dispatch on
// the device (kernel_family) - and a trap, not an empty kernel, so a mistake cannot go silent.
// This device pass compiles code for the family: sm_90a for 90; any other arch (sm_80 SASS, the
// compute_80 PTX) for 80.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int kDeviceFamily = 90;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900
constexpr int kDeviceFamily = 0;  // plain sm_90: neither family's kernels are built for it
#else
constexpr int kDeviceFamily = 80;
#endif

template <class Kernel, class Tag, int Family>
__global__ void __launch_bounds__(Kernel::MaxThreadsPerBlock, Kernel::MinBlocksPerMultiprocessor)
    fastgpt_gemm_kernel(CUTLASS_GRID_CONSTANT typename Kernel::Params const params) {
#if defined(__CUDA_ARCH__)
  if constexpr (Family == kDeviceFamily) {
    extern __shared__ char smem[];
    Kernel op;
    op(params, smem);
  } else {
    __trap();
  }
#endif
}

}  // namespace fastgpt::gemm
