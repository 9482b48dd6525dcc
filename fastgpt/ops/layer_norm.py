"""fastgpt.ops.layer_norm: LayerNorm over the last dim, Triton-fused on the ``triton`` backend."""
from typing import Optional

import torch
from torch import Tensor

from fastgpt import backends, reference
from fastgpt.kernels import limits
from fastgpt.ops import _checks


def _check(x, weight, bias, eps=1e-5):
    _checks.tensor("layer_norm", "x", x, min_ndim=1)
    _checks.like("layer_norm", "weight", weight, x, "x", (x.shape[-1],))
    _checks.like("layer_norm", "bias", bias, x, "x", (x.shape[-1],))


def _why_not(name, x, weight, bias, eps=1e-5):
    if x.shape[-1] > limits.LAYER_NORM_MAX_N:  # the kernel keeps a row on-chip
        return f"the Triton kernel supports widths up to {limits.LAYER_NORM_MAX_N}, got {x.shape[-1]}"
    return backends.triton_why_not(x, limits.DTYPES)


def _probe(device, dtype, B, T, C, H):
    return torch.empty(B, T, C, device=device, dtype=dtype), torch.empty(C, device=device, dtype=dtype), torch.empty(C, device=device, dtype=dtype)


backends.register(backends.OpSpec(
    name="layer_norm", backends=("reference", "triton"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=lambda x, *args, **kwargs: ("triton",) if x.is_cuda else (),
))


def layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5) -> Tensor:
    """LayerNorm of x (..., C) over C with optional weight and bias (C,); output in x's dtype.

    Statistics are computed in fp32. Matches ``F.layer_norm(x, (C,), weight, bias, eps)``;
    weight and bias are cast to x's dtype (as they are for bf16 activations under autocast).
    """
    name = backends.backend_for("layer_norm", x, weight, bias, eps)
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
