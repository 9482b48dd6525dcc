"""fastgpt._C for the ops that have a ``cuda`` backend: imported once here, with the reason it
cannot run a call (the same for every such op)."""
import torch

try:
    from fastgpt import _C
    ERROR = None
except ImportError as e:  # reported by backend(), never swallowed
    _C, ERROR = None, f"fastgpt._C could not be imported ({e}); reinstall with 'pip install -e .'"


def why_not(x, unsupported, *args):
    """Why ``fastgpt._C`` cannot run a call on ``x``'s device, or None. ``unsupported``: the name of
    the extension's shape check for CUDA calls, called as ``_C.<unsupported>(*args)``; it returns ""
    for a shape the CUDA kernels take."""
    if _C is None:
        return ERROR
    if x.device.type not in ("cpu", "cuda"):
        return f"fastgpt._C runs on cpu and cuda tensors, got {x.device.type}"
    if not x.is_cuda:
        return None  # the C++ twin runs any CPU call
    if not _C.cuda_built():
        return "fastgpt._C was built without its CUDA part (FASTGPT_SKIP_CUDA_BUILD or no nvcc)"
    if torch.compiler.is_compiling():
        return None  # a compiled call is checked by the op as it runs
    return getattr(_C, unsupported)(*args) or None
