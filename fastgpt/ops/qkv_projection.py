"""fastgpt.ops.qkv_projection: nanoGPT's c_attn projection written straight into heads.

The ``cuda`` backend is the extension op ``torch.ops.fastgpt.qkv_projection`` (csrc/): CUTLASS
GEMMs on CUDA tensors (fp16/bf16; TMA + wgmma on Hopper, cp.async + mma.sync elsewhere) whose
epilogue writes the heads and whose backward reads them in place, cuBLAS for fp32, and its C++
twin on CPU tensors. It returns one contiguous (3, B, H, T, D) tensor whose three slices are
q, k, v.
"""
from typing import Optional

import torch
from torch import Tensor

from fastgpt import backends, reference
from fastgpt.ops import _checks, _extension
from fastgpt.ops._extension import _C


def _check(x, weight, bias, n_head):
    _checks.tensor("qkv_projection", "x", x, ndim=3)
    _checks.features("qkv_projection", "x", x, "C")
    C = x.shape[2]
    if not isinstance(n_head, int) or isinstance(n_head, bool) or n_head <= 0 or C % n_head:
        raise ValueError(f"fastgpt.ops.qkv_projection: n_head must be a positive int dividing C = {C}, got {n_head!r}")
    _checks.like("qkv_projection", "weight", weight, x, "x", (3 * C, C))
    _checks.like("qkv_projection", "bias", bias, x, "x", (3 * C,))


def _why_not(name, x, weight, bias, n_head):
    return _extension.why_not(x, "qkv_projection_unsupported", *_checks.as_computed(x, weight, bias), n_head)


def _auto_order(x, weight, bias, n_head):
    """``auto`` runs a call on the CUTLASS kernels only where a GPU measurement (the tuning table's
    backend choices, ``scripts/tune.py``) says they beat cuBLAS + view; without one it keeps
    cuBLAS (``reference``); force ``cuda`` to run the kernels."""
    if not x.is_cuda:
        return ()
    tuned = _extension.tuned_backend("qkv_projection", x, _extension.qkv_key(x, n_head))
    return (tuned,) if tuned else ()


def _probe(device, dtype, B, T, C, H):
    kw = dict(device=device, dtype=dtype)
    return torch.empty(B, T, C, **kw), torch.empty(3 * C, C, **kw), torch.empty(3 * C, **kw), H


backends.register(backends.OpSpec(
    name="qkv_projection", backends=("reference", "cuda"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=_auto_order,
))


def qkv_projection(x: Tensor, weight: Tensor, bias: Optional[Tensor], n_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, T, C) @ weight(3C, C)^T + bias(3C) -> q, k, v, each (B, H, T, D), D = C / n_head.

    weight and bias are nanoGPT's ``attn.c_attn`` parameters, unchanged, cast to x's dtype
    when theirs differs. Under autocast both paths compute in the autocast dtype, as
    ``F.linear`` does; otherwise in x's dtype.
    """
    name = backends.backend_for("qkv_projection", x, weight, bias, n_head)
    if name == "reference":
        return reference.qkv_projection(x, _checks.cast(weight, x.dtype), _checks.cast(bias, x.dtype), n_head)
    dtype = _checks.compute_dtype(x)
    x, weight, bias = (_checks.cast(t, dtype) for t in (x, weight, bias))
    return torch.ops.fastgpt.qkv_projection(x, weight, bias, n_head).unbind(0)


if _C is not None:

    @torch.library.register_fake("fastgpt::qkv_projection")
    def _(x, weight, bias, n_head):
        B, T, C = x.shape
        return x.new_empty(3, B, n_head, T, C // n_head)

    @torch.library.register_fake("fastgpt::qkv_projection_backward")
    def _(grad, x, weight, has_bias):
        return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0] if has_bias else 0)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, _n_head = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx, dw, db = torch.ops.fastgpt.qkv_projection_backward(grad, x, weight, ctx.has_bias)
        return dx, dw, db if ctx.has_bias else None, None

    torch.library.register_autograd("fastgpt::qkv_projection", _backward, setup_context=_setup_context)
