"""fastgpt.ops.bias_gelu: gelu(x + bias) in one pass on the ``triton`` backend."""
from typing import Optional

import torch
from torch import Tensor

from fastgpt import backends, reference
from fastgpt.kernels import limits
from fastgpt.ops import _checks

APPROXIMATIONS = ("none", "tanh")


def _check(x, bias, approximate="none"):
    _checks.tensor("bias_gelu", "x", x, min_ndim=1)
    _checks.features("bias_gelu", "x", x, "N")
    _checks.like("bias_gelu", "bias", bias, x, "x", (x.shape[-1],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"fastgpt.ops.bias_gelu: approximate must be 'none' (exact erf) or 'tanh', got {approximate!r}")


def _why_not(name, x, bias, approximate="none"):
    return backends.triton_why_not(x, limits.DTYPES)


def _probe(device, dtype, B, T, C, H):
    return torch.empty(B, T, 4 * C, device=device, dtype=dtype), torch.empty(4 * C, device=device, dtype=dtype)


backends.register(backends.OpSpec(
    name="bias_gelu", backends=("reference", "triton"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=lambda x, *args, **kwargs: ("triton",) if x.is_cuda else (),
))


def bias_gelu(x: Tensor, bias: Optional[Tensor], approximate: str = "none") -> Tensor:
    """gelu(x + bias) for x (..., N), bias (N,) or None; output in x's dtype.

    approximate='none' is nanoGPT's exact-erf ``nn.GELU()``; 'tanh' the tanh approximation.
    bias is cast to x's dtype (an fp32 bias beside bf16 activations under autocast).
    """
    name = backends.backend_for("bias_gelu", x, bias, approximate)
    bias = _checks.cast(bias, x.dtype)
    if name == "reference":
        return reference.bias_gelu(x, bias, approximate)
    return _bias_gelu_triton(x, bias, approximate)


@torch.library.custom_op("fastgpt::bias_gelu", mutates_args=())
def _bias_gelu_triton(x: Tensor, bias: Optional[Tensor], approximate: str) -> Tensor:
    from fastgpt.kernels.bias_gelu import bias_gelu_fwd

    return bias_gelu_fwd(x.reshape(-1, x.shape[-1]), bias, approximate).view(x.shape)


@_bias_gelu_triton.register_fake
def _(x, bias, approximate):
    return x.new_empty(x.shape)


@torch.library.custom_op("fastgpt::bias_gelu_backward", mutates_args=())
def _bias_gelu_backward_triton(dy: Tensor, x: Tensor, bias: Optional[Tensor], approximate: str) -> tuple[Tensor, Tensor]:
    from fastgpt.kernels.bias_gelu import bias_gelu_bwd

    N = x.shape[-1]
    dx, dbias = bias_gelu_bwd(dy.reshape(-1, N), x.reshape(-1, N), bias, approximate)
    return dx.view(x.shape), x.new_empty(0) if dbias is None else dbias


@_bias_gelu_backward_triton.register_fake
def _(dy, x, bias, approximate):
    return x.new_empty(x.shape), x.new_empty(0) if bias is None else bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, dbias = _bias_gelu_backward_triton(dy, x, bias, ctx.approximate)
    return dx, None if bias is None else dbias, None


_bias_gelu_triton.register_autograd(_backward, setup_context=_setup_context)
