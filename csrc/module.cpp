// The Python module fastgpt._C. Importing it runs the TORCH_LIBRARY registrations of the
// other translation units; the functions here only describe the build.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgpt's C++/CUDA operators, registered under torch.ops.fastgpt";
#ifdef FASTGPT_WITH_CUDA
  m.def("cuda_built", []() { return true; }, "whether the CUDA sources were compiled into this build");
#else
  m.def("cuda_built", []() { return false; }, "whether the CUDA sources were compiled into this build");
#endif
}
