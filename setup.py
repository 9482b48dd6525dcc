"""Builds the one extension, fastgpt._C: its C++ (CPU) part always, its CUDA part when it can.

Environment knobs:
  FASTGPT_SKIP_CUDA_BUILD=1   build the CPU part only.
  TORCH_CUDA_ARCH_LIST        CUDA archs; default "8.0;9.0" when no GPU is visible, else torch's
                              choice (the visible GPUs' arch).
  MAX_JOBS                    parallel compile jobs; default chosen from cores and memory.
  CUDA_HOME                   the CUDA toolkit; default: found from nvcc (see _find_cuda_home).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"fastgpt build: {msg}", file=sys.stderr, flush=True)


def _is_toolkit(root):
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h")
    )


def _find_cuda_home():
    """A directory with bin/nvcc *and* include/cuda_runtime.h.

    torch's own guess follows `which nvcc`; where that is a wrapper script such as
    /usr/local/bin/nvcc it lands on /usr/local, which has no CUDA headers or libcudart, and the
    link fails. So every candidate must hold a real toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script: read the path it execs
            with open(nvcc, errors="ignore") as f:
                head = f.read(4096)
            candidates += [os.path.dirname(os.path.dirname(p)) for p in re.findall(r"(/\S+/bin/nvcc)\b", head)]
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if _is_toolkit(c):
            return os.path.realpath(c)
    return None


def _nvcc_version(cuda_home):
    out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _max_jobs():
    if os.environ.get("MAX_JOBS"):
        return os.environ["MAX_JOBS"]
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 8
    # nvcc on torch headers peaks near 3 GiB per job; leave room for the rest of the machine.
    return str(max(1, min(cores, int(mem_gib // 4))))


def _extensions():
    cuda_home = None if os.environ.get("FASTGPT_SKIP_CUDA_BUILD") == "1" else _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # must be set before cpp_extension is imported

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    os.environ["MAX_JOBS"] = _max_jobs()
    log(f"MAX_JOBS={os.environ['MAX_JOBS']} (cores={os.cpu_count()}), torch {torch.__version__}")

    with_cuda = True
    if os.environ.get("FASTGPT_SKIP_CUDA_BUILD") == "1":
        with_cuda, why = False, "FASTGPT_SKIP_CUDA_BUILD=1"
    elif torch.version.cuda is None:
        with_cuda, why = False, f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        with_cuda, why = False, "no CUDA toolkit found (set CUDA_HOME to a directory with bin/nvcc)"

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cxx_flags = ["-O3"]  # torch picks the C++ standard its headers need
    if not with_cuda:
        log(f"building the CPU part of fastgpt._C only: {why}")
        ext = CppExtension("fastgpt._C", cpp_sources, extra_compile_args={"cxx": cxx_flags})
        return [ext], BuildExtension

    nvcc = _nvcc_version(cuda_home)
    torch_cuda = tuple(int(x) for x in torch.version.cuda.split(".")[:2])
    if nvcc is None or nvcc[0] != torch_cuda[0]:
        found = "unknown" if nvcc is None else f"{nvcc[0]}.{nvcc[1]}"
        raise SystemExit(
            f"fastgpt build: nvcc at {cuda_home} is CUDA {found}, but torch {torch.__version__} was "
            f"built with CUDA {torch.version.cuda}; their major versions must match. Point CUDA_HOME "
            f"at a CUDA {torch_cuda[0]}.x toolkit, or set FASTGPT_SKIP_CUDA_BUILD=1 to build the CPU part only."
        )
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    log(
        f"building fastgpt._C with CUDA: nvcc {nvcc[0]}.{nvcc[1]} at {cuda_home}, "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)')}"
    )
    ext = CUDAExtension(
        "fastgpt._C",
        cpp_sources + sorted(glob.glob(os.path.join("csrc", "*.cu"))),
        define_macros=[("FASTGPT_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], BuildExtension


ext_modules, build_ext = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
