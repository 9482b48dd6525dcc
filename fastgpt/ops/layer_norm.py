"""fastgpt.ops.layer_norm: LayerNorm over the last dim, Triton-fused on the ``triton`` backend."""
from typing import Optional

import torch
from torch import Tensor

from fastgpt import backends, reference
from fastgpt.kernels import limits
from fastgpt.ops import _checks


def _check(x, weight, bias, eps=1e-5):
    _checks.tensor("layer_norm", "x", x, min_ndim=1)
    _checks.features("layer_norm", "x", x, "C")
    _checks.number("layer_norm", "eps", eps, lambda e: e >= 0, "a finite number >= 0")
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
        if _needs_thread_invariant_grads(x, weight, bias):
            return _LayerNormCPU.apply(x, weight, bias, eps)
        return reference.layer_norm(x, weight, bias, eps)
    return _layer_norm_triton(x, weight, bias, eps)[0]


# ATen's CPU LayerNorm backward sums the weight and bias gradients in one partial per thread, so
# their last bits depend on the thread count, and a run whose CPU threads are tuned by timing
# (train.py's default) would neither repeat nor resume exactly. With more than one thread,
# training on the CPU therefore runs that one reduction through ATen's own kernel at a single
# thread: bit for bit what F.layer_norm gives at one thread, at any thread count, while dx (per
# row, thread-invariant) keeps every thread. Eager only (a compiled graph never takes this path),
# so a plain autograd.Function: torch.library's dispatch would double the cost of a small
# LayerNorm here (tests/test_runtime.py checks the bits).


def _needs_thread_invariant_grads(x, weight, bias):
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (weight, bias))
            and torch.get_num_threads() > 1)


class _LayerNormCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        shape, (need_x, need_w, need_b) = (x.shape[-1],), ctx.needs_input_grad[:3]
        dx = torch.ops.aten.native_layer_norm_backward(dy, x, shape, mean, rstd, weight, bias, [need_x, False, False])[0]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _, dw, db = torch.ops.aten.native_layer_norm_backward(dy, x, shape, mean, rstd, weight, bias, [False, need_w, need_b])
        finally:
            torch.set_num_threads(threads)
        return dx, dw, db, None


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
