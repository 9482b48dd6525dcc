"""fastgpt.ops.linear_bias_gelu: nanoGPT's c_fc and its GELU, gelu(x @ weight^T + bias).

Backends: ``cuda`` is the extension op ``torch.ops.fastgpt.linear_bias_gelu`` (csrc/): one
CUTLASS GEMM whose epilogue adds the bias, stores the pre-activation for the backward and
applies the GELU (fp16/bf16 on GPUs: TMA + wgmma on Hopper, cp.async + mma.sync elsewhere;
cuBLAS for fp32), and its C++ twin on CPU tensors. ``triton`` is ``F.linear`` followed by the
Triton bias+GELU kernel (``fastgpt.ops.bias_gelu``'s), and ``reference`` plain PyTorch.

``auto`` picks the CUTLASS GEMM only where a GPU measurement (the tuning table's backend choices,
``scripts/tune.py``) says it is faster than ``F.linear`` + the Triton kernel. No such measurement
exists yet (nothing of the CUDA path has run on a GPU), so without one ``auto`` keeps
``triton`` on CUDA tensors, ``reference`` elsewhere. Force ``cuda`` to run the GEMM.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from fastgpt import backends, reference
from fastgpt.kernels import limits
from fastgpt.ops import _checks, _extension
from fastgpt.ops._extension import _C
from fastgpt.ops.bias_gelu import APPROXIMATIONS, _bias_gelu_triton


def _check(x, weight, bias, approximate="none"):
    _checks.tensor("linear_bias_gelu", "x", x, min_ndim=1)
    _checks.features("linear_bias_gelu", "x", x, "K")
    _checks.tensor("linear_bias_gelu", "weight", weight, ndim=2)
    if weight.shape[0] < 1 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"fastgpt.ops.linear_bias_gelu: weight must be (N, {x.shape[-1]}) with N >= 1 for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"fastgpt.ops.linear_bias_gelu: weight is on {weight.device} but x is on {x.device}")
    _checks.like("linear_bias_gelu", "bias", bias, x, "x", (weight.shape[0],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"fastgpt.ops.linear_bias_gelu: approximate must be 'none' (exact erf) or 'tanh', got {approximate!r}")


def _why_not(name, x, weight, bias, approximate="none"):
    if name == "triton":
        return backends.triton_why_not(x, limits.DTYPES)
    return _extension.why_not(x, "linear_bias_gelu_unsupported", *_checks.as_computed(x, weight, bias), approximate)


def _auto_order(x, weight, bias, approximate="none"):
    """The CUTLASS GEMM where the tuning table's backend choices name it for this shape (see the
    module doc); else F.linear + the Triton kernel on CUDA."""
    if not x.is_cuda:
        return ()
    tuned = _extension.tuned_backend("linear_bias_gelu", x, _extension.fc_key(x, weight.shape[0]))
    return (tuned, "triton") if tuned else ("triton",)


def _probe(device, dtype, B, T, C, H):
    kw = dict(device=device, dtype=dtype)
    return torch.empty(B, T, C, **kw), torch.empty(4 * C, C, **kw), torch.empty(4 * C, **kw)


backends.register(backends.OpSpec(
    name="linear_bias_gelu", backends=("reference", "triton", "cuda"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=_auto_order,
))


def linear_bias_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor], approximate: str = "none") -> Tensor:
    """gelu(x @ weight^T + bias) for x (..., K), weight (N, K), bias (N,) or None -> (..., N).

    weight and bias are nanoGPT's ``mlp.c_fc`` parameters, unchanged, cast to the compute dtype
    when theirs differs. approximate='none' is the exact-erf ``nn.GELU()``, 'tanh' GPT-2's
    approximation. Under autocast every path computes in the autocast dtype, as ``F.linear``
    does; otherwise in x's dtype.
    """
    name = backends.backend_for("linear_bias_gelu", x, weight, bias, approximate)
    if name == "reference":
        return reference.linear_bias_gelu(x, _checks.cast(weight, x.dtype), _checks.cast(bias, x.dtype), approximate)
    if name == "triton":
        pre = F.linear(x, _checks.cast(weight, x.dtype))
        return _bias_gelu_triton(pre, _checks.cast(bias, pre.dtype), approximate)
    dtype = _checks.compute_dtype(x)
    x, weight, bias = (_checks.cast(t, dtype) for t in (x, weight, bias))
    return torch.ops.fastgpt.linear_bias_gelu(x, weight, bias, approximate)[0]


if _C is not None:

    @torch.library.register_fake("fastgpt::linear_bias_gelu")
    def _(x, weight, bias, approximate):
        shape = (*x.shape[:-1], weight.shape[0])
        return x.new_empty(shape), x.new_empty(shape)

    @torch.library.register_fake("fastgpt::linear_bias_gelu_backward")
    def _(grad, x, weight, pre, has_bias, approximate):
        return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0] if has_bias else 0)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, approximate = inputs
        ctx.save_for_backward(x, weight, output[1])
        ctx.has_bias, ctx.approximate = bias is not None, approximate

    def _backward(ctx, grad, _grad_pre):
        x, weight, pre = ctx.saved_tensors
        dx, dw, db = torch.ops.fastgpt.linear_bias_gelu_backward(grad, x, weight, pre, ctx.has_bias, ctx.approximate)
        return dx, dw, db if ctx.has_bias else None, None

    torch.library.register_autograd("fastgpt::linear_bias_gelu", _backward, setup_context=_setup_context)
