"""Builds the one extension, fastgpt._C: its C++ (CPU) part always, its CUDA part when it can.

Nothing here imports torch or looks for nvcc until a build actually runs (BuildExt.run):
metadata-only hooks (egg_info, dist_info, get_requires_for_build_*) see a placeholder extension.

Environment knobs:
  FASTGPT_SKIP_CUDA_BUILD=1   build the CPU part only.
  TORCH_CUDA_ARCH_LIST        CUDA archs, e.g. "8.0+PTX;9.0a"; default: the visible GPUs' archs,
                              or "8.0+PTX;9.0a" when none is visible. 9.0 always builds as 9.0a
                              (the Hopper kernels need wgmma and TMA); +PTX embeds PTX that newer
                              GPUs compile at load time.
  MAX_JOBS                    parallel compile jobs; default chosen from cores and free memory.
  CUDA_HOME                   the CUDA toolkit; default: found from nvcc (see _find_cuda_home).
  FASTGPT_CUTLASS_DIR         a CUTLASS source tree (with include/cute and include/cutlass);
                              default: the nvidia-cutlass package of the target environment.
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0+PTX;9.0a"
# Peak memory of one nvcc job on a CUTLASS Hopper translation unit (measured: 5-6.4 GB), and of
# one g++ job on torch headers.
GIB_PER_CUDA_JOB, GIB_PER_CXX_JOB = 6, 3


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


def _cutlass_include():
    """CUTLASS's include dir: FASTGPT_CUTLASS_DIR, else the installed nvidia-cutlass package's."""
    root = os.environ.get("FASTGPT_CUTLASS_DIR")
    if not root:
        spec = importlib.util.find_spec("cutlass_library")  # locates the package without running it
        if spec is not None and spec.origin:
            root = os.path.join(os.path.dirname(spec.origin), "source")
    include = os.path.join(root, "include") if root else None
    if include is None or not os.path.isfile(os.path.join(include, "cutlass", "cutlass.h")):
        where = f"FASTGPT_CUTLASS_DIR={root!r} has no include/cutlass/cutlass.h" if root else "it is not installed"
        raise SystemExit(
            f"fastgpt build: the CUDA part needs the CUTLASS headers, and {where}. Install them with "
            f"'{sys.executable} -m pip install --no-deps nvidia-cutlass==4.2.0.0', or point FASTGPT_CUTLASS_DIR "
            f"at a CUTLASS source tree, or set FASTGPT_SKIP_CUDA_BUILD=1 to build the CPU part only."
        )
    with open(os.path.join(include, "cutlass", "version.h")) as f:
        version = ".".join(re.findall(r"#define CUTLASS_(?:MAJOR|MINOR|PATCH) (\d+)", f.read()))
    return include, version


def _arch_list(torch):
    """The arch list to build, every 9.0 turned into 9.0a."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";")
    if not archs:
        visible = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = ";".join(f"{major}.{minor}" for major, minor in visible) or DEFAULT_ARCHS
    out = []
    for arch in filter(None, archs.split(";")):
        if not re.fullmatch(r"\d+\.\d+a?(\+PTX)?", arch):
            raise SystemExit(f"fastgpt build: cannot read TORCH_CUDA_ARCH_LIST entry {arch!r}; expected e.g. 8.0, 9.0a, 8.6+PTX")
        out.append(re.sub(r"^9\.0(?=$|\+)", "9.0a", arch))
    return out


def _gencode_flags(archs):
    flags = []
    for arch in archs:
        num = arch.split("+")[0].replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def _max_jobs(with_cuda):
    if os.environ.get("MAX_JOBS"):
        return os.environ["MAX_JOBS"], "set in the environment"
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            free_gib = int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) / 2**20
    except (OSError, AttributeError):
        free_gib = 8.0
    per_job = GIB_PER_CUDA_JOB if with_cuda else GIB_PER_CXX_JOB
    jobs = max(1, min(cores, int(free_gib // per_job)))
    return str(jobs), f"{cores} cores, {free_gib:.0f} GiB available, ~{per_job} GiB per job"


def _sources(pattern):
    # The CUTLASS Hopper units take longest: start them first.
    return sorted(glob.glob(os.path.join("csrc", pattern)), key=lambda p: ("sm90" not in p, "sm80" not in p, p))


def _sources_header():
    """build/generated/fastgpt_sources.h: the sha256 of csrc/ as built (module.cpp exposes it as
    fastgpt._C.sources_sha256(), what a tuning table's backend choices are checked against; the
    hash is kernels/tuning.py's csrc_sha256). Only module.cpp includes it, so a changed hash
    recompiles that one unit; an unchanged one is not rewritten."""
    spec = importlib.util.spec_from_file_location("_fastgpt_tuning", os.path.join(HERE, "kernels", "tuning.py"))
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)  # stdlib only: no torch, no triton
    folder = os.path.join(HERE, "build", "generated")
    os.makedirs(folder, exist_ok=True)
    header = os.path.join(folder, "fastgpt_sources.h")
    text = f'#pragma once\n#define FASTGPT_SOURCES_SHA256 "{tuning.csrc_sha256(os.path.join(HERE, "csrc"))}"\n'
    if not os.path.exists(header) or open(header).read() != text:
        with open(header, "w") as f:
            f.write(text)
    return folder


def _configure(ext):
    """Fills in the placeholder extension for this machine; returns torch's BuildExtension."""
    skip = os.environ.get("FASTGPT_SKIP_CUDA_BUILD") == "1"
    cuda_home = None if skip else _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # must be set before cpp_extension is imported

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    why = None
    if skip:
        why = "FASTGPT_SKIP_CUDA_BUILD=1"
    elif torch.version.cuda is None:
        why = f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        why = "no CUDA toolkit found (set CUDA_HOME to a directory with bin/nvcc)"
    with_cuda = why is None
    os.environ["MAX_JOBS"], jobs_why = _max_jobs(with_cuda)
    log(f"MAX_JOBS={os.environ['MAX_JOBS']} ({jobs_why}), torch {torch.__version__}")

    cpp_sources = _sources("*.cpp")
    cxx_flags = ["-O3"]  # torch picks the C++ standard its headers need
    generated = _sources_header()
    if not with_cuda:
        log(f"building the CPU part of fastgpt._C only: {why}")
        real = CppExtension(ext.name, cpp_sources, include_dirs=[generated], extra_compile_args={"cxx": cxx_flags})
    else:
        nvcc = _nvcc_version(cuda_home)
        torch_cuda = tuple(int(x) for x in torch.version.cuda.split(".")[:2])
        if nvcc is None or nvcc[0] != torch_cuda[0]:
            found = "unknown" if nvcc is None else f"{nvcc[0]}.{nvcc[1]}"
            raise SystemExit(
                f"fastgpt build: nvcc at {cuda_home} is CUDA {found}, but torch {torch.__version__} was "
                f"built with CUDA {torch.version.cuda}; their major versions must match. Point CUDA_HOME "
                f"at a CUDA {torch_cuda[0]}.x toolkit, or set FASTGPT_SKIP_CUDA_BUILD=1 to build the CPU part only."
            )
        archs = _arch_list(torch)
        cutlass_include, cutlass_version = _cutlass_include()
        log(
            f"building fastgpt._C with CUDA: nvcc {nvcc[0]}.{nvcc[1]} at {cuda_home}, archs {';'.join(archs)}, "
            f"CUTLASS {cutlass_version} from {cutlass_include}"
        )
        real = CUDAExtension(
            ext.name,
            _sources("*.cu") + cpp_sources,
            include_dirs=[cutlass_include, generated],
            define_macros=[("FASTGPT_WITH_CUDA", "1")],
            # Explicit -gencode flags: torch then adds none of its own (it skips any list with "arch").
            # -DNDEBUG as for the C++ units: CUTLASS's device-side asserts cost registers and calls.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", "-DNDEBUG"] + _gencode_flags(archs)},
        )
    for attr in ("sources", "include_dirs", "define_macros", "library_dirs", "libraries", "runtime_library_dirs",
                 "extra_compile_args", "extra_link_args", "language"):
        setattr(ext, attr, getattr(real, attr))
    return BuildExtension


class BuildExt(build_ext):
    """setuptools' build_ext until it runs; from then on torch's BuildExtension (ninja, nvcc flags)."""

    def run(self):
        self.__class__ = _configure(self.extensions[0])
        self.no_python_abi_suffix, self.use_ninja = False, True  # what BuildExtension.__init__ sets
        self.force = True  # as BuildExtension.finalize_options: ninja decides what is stale
        self.run()


setup(ext_modules=[Extension("fastgpt._C", sources=[])], cmdclass={"build_ext": BuildExt})
