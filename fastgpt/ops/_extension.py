"""fastgpt._C for the ops that have a ``cuda`` backend: imported once here, with the reason it
cannot run a call (the same for every such op)."""
import torch

from fastgpt.kernels import tuning
from fastgpt.ops import _checks

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


def tuned_backend(op, x, key):
    """The backend a GPU measurement (the tuning table's backend choices, measured by
    scripts/tune.py against this very build of fastgpt._C) names for this CUDA call, or None: no
    table, no entry for ``key``, another build, not a CUDA call, or inside torch.compile (whose
    traced code reads no files: compiled models keep the untuned ``auto`` order)."""
    if _C is None or not x.is_cuda or not _C.cuda_built() or torch.compiler.is_compiling():
        return None
    return tuning.backend_choice(op, x.device, key, _C.sources_sha256())


def _rows(x):
    """x's rows (all dims but the last), bucketed to a power of two."""
    return tuning.bucket(x.numel() // max(1, x.shape[-1]))


def fc_key(x, out_features):
    """The tuning key of a c_fc-shaped call (linear_bias_gelu, mlp): compute dtype, in and out
    features, rows bucketed to a power of two."""
    return {"dtype": _checks.compute_dtype(x), "K": x.shape[-1], "N": out_features, "rows": _rows(x)}


def qkv_key(x, n_head):
    """The tuning key of a qkv_projection call: compute dtype, C, heads, tokens (B*T) bucketed."""
    return {"dtype": _checks.compute_dtype(x), "C": x.shape[-1], "H": n_head, "tokens": _rows(x)}
