"""fastgpt.ops.bias_gelu: gelu(x + bias) in one pass on the ``triton`` backend."""
import importlib.util
from typing import Optional

import torch
from torch import Tensor

from fastgpt import reference
from fastgpt.backends import choose, triton_why_not
from fastgpt.ops import _checks

_HAS_KERNEL = importlib.util.find_spec("fastgpt.kernels.bias_gelu") is not None
APPROXIMATIONS = ("none", "tanh")


def _check(x, bias, approximate):
    _checks.tensor("bias_gelu", "x", x, min_ndim=1)
    _checks.like("bias_gelu", "bias", bias, x, "x", (x.shape[-1],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"fastgpt.ops.bias_gelu: approximate must be 'none' (exact erf) or 'tanh', got {approximate!r}")


def backend(x: Tensor, bias: Optional[Tensor], approximate: str = "none") -> str:
    """The backend bias_gelu would run this call on."""
    _check(x, bias, approximate)

    def why_not(name):
        if name == "reference":
            return None
        if name == "cuda":
            return "fastgpt._C has no bias_gelu kernel; use 'triton' or 'reference'"
        if not _HAS_KERNEL:
            return "this build has no Triton bias_gelu kernel"
        return triton_why_not(x)

    return choose("bias_gelu", why_not, ("triton",) if x.is_cuda else ())


def bias_gelu(x: Tensor, bias: Optional[Tensor], approximate: str = "none") -> Tensor:
    """gelu(x + bias) for x (..., N), bias (N,) or None; output in x's dtype.

    approximate='none' is nanoGPT's exact-erf ``nn.GELU()``; 'tanh' the tanh approximation.
    bias is cast to x's dtype (an fp32 bias beside bf16 activations under autocast).
    """
    name = backend(x, bias, approximate)
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
