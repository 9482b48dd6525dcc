"""fastgpt.ops.layer_norm: LayerNorm over the last dim, Triton-fused on the ``triton`` backend."""
import importlib.util
from typing import Optional

import torch
from torch import Tensor

from fastgpt import reference
from fastgpt.backends import choose, triton_why_not
from fastgpt.ops import _checks

_HAS_KERNEL = importlib.util.find_spec("fastgpt.kernels.layer_norm") is not None
MAX_TRITON_WIDTH = 8192  # = fastgpt.kernels.layer_norm.MAX_N: the kernel keeps a row on-chip


def _check(x, weight, bias):
    _checks.tensor("layer_norm", "x", x, min_ndim=1)
    _checks.like("layer_norm", "weight", weight, x, "x", (x.shape[-1],))
    _checks.like("layer_norm", "bias", bias, x, "x", (x.shape[-1],))


def backend(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5) -> str:
    """The backend layer_norm would run this call on."""
    _check(x, weight, bias)

    def why_not(name):
        if name == "reference":
            return None
        if name == "cuda":
            return "fastgpt._C has no layer_norm kernel; use 'triton' or 'reference'"
        if not _HAS_KERNEL:
            return "this build has no Triton layer_norm kernel"
        if x.shape[-1] > MAX_TRITON_WIDTH:
            return f"the Triton kernel supports widths up to {MAX_TRITON_WIDTH}, got {x.shape[-1]}"
        return triton_why_not(x)

    return choose("layer_norm", why_not, ("triton",) if x.is_cuda else ())


def layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5) -> Tensor:
    """LayerNorm of x (..., C) over C with optional weight and bias (C,); output in x's dtype.

    Statistics are computed in fp32. Matches ``F.layer_norm(x, (C,), weight, bias, eps)``;
    weight and bias are cast to x's dtype (as they are for bf16 activations under autocast).
    """
    name = backend(x, weight, bias, eps)
    weight, bias = _checks.cast(weight, x.dtype), _checks.cast(bias, x.dtype)
    if name == "reference":
        return reference.layer_norm(x, weight, bias, eps)
    return _layer_norm_triton(x, weight, bias, eps)[0]


@torch.library.custom_op("fastgpt::layer_norm", mutates_args=())
def _layer_norm_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    from fastgpt.kernels.layer_norm import layer_norm_fwd

    y, mean, rstd = layer_norm_fwd(x.reshape(-1, x.shape[-1]), weight, bias, eps)
    return y.view(x.shape), mean, rstd


@_layer_norm_triton.register_fake
def _(x, weight, bias, eps):
    rows = x.numel() // max(x.shape[-1], 1)
    return x.new_empty(x.shape), x.new_empty(rows, dtype=torch.float32), x.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("fastgpt::layer_norm_backward", mutates_args=())
def _layer_norm_backward_triton(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    from fastgpt.kernels.layer_norm import layer_norm_bwd

    C = x.shape[-1]
    dx, dw, db = layer_norm_bwd(dy.reshape(-1, C), x.reshape(-1, C), weight, bias, mean, rstd)
    # outputs of a custom op may not alias each other: a fresh empty for each missing gradient
    return dx.view(x.shape), x.new_empty(0) if dw is None else dw, x.new_empty(0) if db is None else db


@_layer_norm_backward_triton.register_fake
def _(dy, x, weight, bias, mean, rstd):
    return (
        x.new_empty(x.shape),
        x.new_empty(0) if weight is None else weight.new_empty(weight.shape),
        x.new_empty(0) if bias is None else bias.new_empty(bias.shape),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_backward_triton(dy, x, weight, bias, mean, rstd)
    return dx, None if weight is None else dw, None if bias is None else db, None


_layer_norm_triton.register_autograd(_backward, setup_context=_setup_context)
