// The one place fastgpt's CUTLASS kernels encode a TMA descriptor (see cutlass_common.cuh): the
// driver's cuTensorMapEncodeTiled, reached through the runtime's entry-point query as CUTLASS
// itself would, or - while a TmaRecorder is alive on this thread - a record of the arguments,
// so the host tests can read the descriptors a kernel would use without a GPU.
#include "cutlass_common.cuh"

#include <cstring>

namespace fastgpt::gemm {
namespace {
thread_local std::vector<TmaRecord>* recording = nullptr;
thread_local CUresult last_result = CUDA_SUCCESS;

int element_bytes(CUtensorMapDataType type) {
  switch (type) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_UINT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_UINT32: return 4;
    default: return 0;
  }
}
}  // namespace

CUresult last_tma_encode_result() { return last_result; }
void reset_tma_encode_result() { last_result = CUDA_SUCCESS; }

TmaRecorder::TmaRecorder(std::vector<TmaRecord>* out) : previous_(recording) { recording = out; }
TmaRecorder::~TmaRecorder() { recording = previous_; }

}  // namespace fastgpt::gemm

extern "C" CUresult CUDAAPI fastgpt_tma_encode_tiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank,
                                                     void* address, const cuuint64_t* dims, const cuuint64_t* strides,
                                                     const cuuint32_t* box, const cuuint32_t* element_strides,
                                                     CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                                     CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill fill) {
  using namespace fastgpt::gemm;
  if (recording != nullptr) {
    TmaRecord r;
    r.dims.assign(dims, dims + rank);
    r.strides.assign(strides, strides + (rank > 0 ? rank - 1 : 0));
    r.box.assign(box, box + rank);
    r.address = reinterpret_cast<uint64_t>(address);
    r.element_bytes = element_bytes(type);
    recording->push_back(std::move(r));
    std::memset(map, 0, sizeof(*map));
    return CUDA_SUCCESS;
  }
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  const CUresult result = encode == nullptr ? CUDA_ERROR_NOT_FOUND
                                            : encode(map, type, rank, address, dims, strides, box,
                                                     element_strides, interleave, swizzle, l2, fill);
  if (result != CUDA_SUCCESS) last_result = result;
  return result;
}
