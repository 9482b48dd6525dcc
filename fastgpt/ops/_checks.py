"""Argument checks shared by the public ops: each error names the argument and what was expected.

The checks run before any backend is chosen, so a call is refused with the same error on every
backend. Zero-size batch, head and time dims are valid (empty results, empty or zero
gradients); a zero feature dim (C, N, D) is refused: there is nothing to normalise or attend with.
"""
import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: reference only


def tensor(op, name, t, ndim=None, min_ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgpt.ops.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgpt.ops.{op}: {name} must be a floating-point tensor "
                        f"(float32, float16, bfloat16; float64 on the reference backend), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"fastgpt.ops.{op}: {name} must be {ndim}-d, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"fastgpt.ops.{op}: {name} must have at least {min_ndim} dim(s), got shape {tuple(t.shape)}")


def like(op, name, t, ref, ref_name, shape):
    """Optional tensor ``t`` must have ``shape`` and ``ref``'s device. Its dtype may differ (fp32
    parameters beside bf16 activations under autocast): the ops cast it to ``ref``'s."""
    if t is None:
        return
    tensor(op, name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"fastgpt.ops.{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"fastgpt.ops.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def cast(t, dtype):
    """``t`` in ``dtype`` (None stays None): parameters follow the activation's precision."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def features(op, name, t, dim):
    """``t``'s last dim (``dim``: C, N or D) must be at least 1."""
    if t.shape[-1] < 1:
        raise ValueError(f"fastgpt.ops.{op}: {name}'s last dim ({dim}) must be at least 1, got shape {tuple(t.shape)}")


def flag(op, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"fastgpt.ops.{op}: {name} must be True or False, got {value!r}")


def number(op, name, value, ok, expected):
    """A real number (not a bool) for which ``ok(value)`` holds; TypeError/ValueError naming ``expected``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fastgpt.ops.{op}: {name} must be {expected}, got {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"fastgpt.ops.{op}: {name} must be {expected}, got {value!r}")


def compute_dtype(x):
    """The dtype an op computes x in: autocast's where it is on, as F.linear does; else x's."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def as_computed(*tensors):
    """The tensors with the shapes and the dtype an op passes to the extension, for its
    support checks (which read nothing else): no copy of their contents."""
    dtype = compute_dtype(tensors[0])
    return [t if t is None or t.dtype == dtype else t.new_empty(1, dtype=dtype).expand(t.shape) for t in tensors]
