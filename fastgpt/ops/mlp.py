"""fastgpt.ops.mlp: nanoGPT's MLP without its dropout, c_proj(gelu(c_fc(x))).

One op for both layers so that the backward can fuse across them: the GELU's derivative
multiplies the output of c_proj's dx GEMM, so on the ``cuda`` backend that GEMM's epilogue reads
the saved pre-activation and applies the dGELU before anything is stored: the gradient of the
GELU's output is never written, and no separate dGELU pass reads it back (c_fc's bias gradient is
then one column-sum pass over dpre). The forward is ``linear_bias_gelu``'s CUTLASS GEMM (bias and
GELU in its epilogue), then c_proj.

Backends: ``cuda`` is the extension op ``torch.ops.fastgpt.mlp`` (csrc/linear_bias_gelu.h; its
C++ twin on CPU tensors). ``triton`` is ``linear_bias_gelu``'s Triton path (``F.linear`` + the
Triton bias+GELU kernel) then ``F.linear``, and ``reference`` plain PyTorch. ``auto`` picks as
``linear_bias_gelu`` does: the CUTLASS path only where a GPU measurement says it is faster (none
yet), so ``triton`` on CUDA tensors and ``reference`` elsewhere, unless the device's tuning
table names a backend for the call's shape (``scripts/tune.py`` times ``cuda`` against ``triton``).
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


def _check(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate="none"):
    _checks.tensor("mlp", "x", x, min_ndim=1)
    _checks.features("mlp", "x", x, "C")
    _checks.tensor("mlp", "fc_weight", fc_weight, ndim=2)
    if fc_weight.shape[0] < 1 or fc_weight.shape[1] != x.shape[-1]:
        raise ValueError(f"fastgpt.ops.mlp: fc_weight must be (N, {x.shape[-1]}) with N >= 1 for x of shape "
                         f"{tuple(x.shape)}, got {tuple(fc_weight.shape)}")
    _checks.tensor("mlp", "proj_weight", proj_weight, ndim=2)
    if proj_weight.shape[0] < 1 or proj_weight.shape[1] != fc_weight.shape[0]:
        raise ValueError(f"fastgpt.ops.mlp: proj_weight must be (C_out, {fc_weight.shape[0]}) with C_out >= 1 for "
                         f"fc_weight of shape {tuple(fc_weight.shape)}, got {tuple(proj_weight.shape)}")
    for name, w in (("fc_weight", fc_weight), ("proj_weight", proj_weight)):
        if w.device != x.device:
            raise ValueError(f"fastgpt.ops.mlp: {name} is on {w.device} but x is on {x.device}")
    _checks.like("mlp", "fc_bias", fc_bias, x, "x", (fc_weight.shape[0],))
    _checks.like("mlp", "proj_bias", proj_bias, x, "x", (proj_weight.shape[0],))
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"fastgpt.ops.mlp: approximate must be 'none' (exact erf) or 'tanh', got {approximate!r}")


def _why_not(name, x, fc_weight, fc_bias, proj_weight, proj_bias, approximate="none"):
    if name == "triton":
        return backends.triton_why_not(x, limits.DTYPES)
    args = _checks.as_computed(x, fc_weight, fc_bias, proj_weight, proj_bias)
    return _extension.why_not(x, "mlp_unsupported", *args, approximate)


def _auto_order(x, fc_weight, *args):
    """The CUTLASS path where the tuning table's backend choices (scripts/tune.py, measured on a
    GPU against this build) name it for this shape; else F.linear + the Triton kernel on CUDA."""
    if not x.is_cuda:
        return ()
    tuned = _extension.tuned_backend("mlp", x, _extension.fc_key(x, fc_weight.shape[0]))
    return (tuned, "triton") if tuned else ("triton",)


def _probe(device, dtype, B, T, C, H):
    kw = dict(device=device, dtype=dtype)
    return (torch.empty(B, T, C, **kw), torch.empty(4 * C, C, **kw), torch.empty(4 * C, **kw),
            torch.empty(C, 4 * C, **kw), torch.empty(C, **kw))


backends.register(backends.OpSpec(
    name="mlp", backends=("reference", "triton", "cuda"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=_auto_order,
))


def mlp(x: Tensor, fc_weight: Tensor, fc_bias: Optional[Tensor], proj_weight: Tensor, proj_bias: Optional[Tensor],
        approximate: str = "none") -> Tensor:
    """c_proj(gelu(c_fc(x))) for x (..., C), fc_weight (N, C), fc_bias (N,) or None, proj_weight
    (C_out, N), proj_bias (C_out,) or None -> (..., C_out).

    The weights and biases are nanoGPT's ``mlp.c_fc`` and ``mlp.c_proj`` parameters, unchanged,
    cast to the compute dtype when theirs differs. approximate='none' is the exact-erf
    ``nn.GELU()``, 'tanh' GPT-2's approximation. Under autocast every path computes in the
    autocast dtype, as ``F.linear`` does; otherwise in x's dtype. Dropout is the caller's.
    """
    name = backends.backend_for("mlp", x, fc_weight, fc_bias, proj_weight, proj_bias, approximate)
    if name == "reference":
        dtype = x.dtype
        return reference.mlp(x, *(_checks.cast(t, dtype) for t in (fc_weight, fc_bias, proj_weight, proj_bias)),
                             approximate)
    if name == "triton":
        pre = F.linear(x, _checks.cast(fc_weight, x.dtype))
        act = _bias_gelu_triton(pre, _checks.cast(fc_bias, pre.dtype), approximate)
        return F.linear(act, _checks.cast(proj_weight, act.dtype), _checks.cast(proj_bias, act.dtype))
    dtype = _checks.compute_dtype(x)
    args = [_checks.cast(t, dtype) for t in (x, fc_weight, fc_bias, proj_weight, proj_bias)]
    return torch.ops.fastgpt.mlp(*args, approximate)[0]


if _C is not None:

    @torch.library.register_fake("fastgpt::mlp")
    def _(x, fc_weight, fc_bias, proj_weight, proj_bias, approximate):
        hidden = (*x.shape[:-1], fc_weight.shape[0])
        return x.new_empty((*x.shape[:-1], proj_weight.shape[0])), x.new_empty(hidden), x.new_empty(hidden)

    @torch.library.register_fake("fastgpt::mlp_backward")
    def _(grad, x, fc_weight, pre, act, proj_weight, fc_has_bias, proj_has_bias, approximate):
        return (x.new_empty(x.shape), fc_weight.new_empty(fc_weight.shape),
                fc_weight.new_empty(fc_weight.shape[0] if fc_has_bias else 0), proj_weight.new_empty(proj_weight.shape),
                proj_weight.new_empty(proj_weight.shape[0] if proj_has_bias else 0))

    def _setup_context(ctx, inputs, output):
        x, fc_weight, fc_bias, proj_weight, proj_bias, approximate = inputs
        _, pre, act = output
        ctx.save_for_backward(x, fc_weight, pre, act, proj_weight)
        ctx.fc_has_bias, ctx.proj_has_bias, ctx.approximate = fc_bias is not None, proj_bias is not None, approximate

    def _backward(ctx, grad, _grad_pre, _grad_act):
        x, fc_weight, pre, act, proj_weight = ctx.saved_tensors
        dx, dfc_w, dfc_b, dproj_w, dproj_b = torch.ops.fastgpt.mlp_backward(
            grad, x, fc_weight, pre, act, proj_weight, ctx.fc_has_bias, ctx.proj_has_bias, ctx.approximate)
        return (dx, dfc_w, dfc_b if ctx.fc_has_bias else None, dproj_w, dproj_b if ctx.proj_has_bias else None, None)

    torch.library.register_autograd("fastgpt::mlp", _backward, setup_context=_setup_context)
