"""fastgpt.ops.attention: causal flash-attention, Triton-fused on the ``triton`` backend."""
import math
from typing import Optional

import torch
from torch import Tensor

from fastgpt import backends, reference
from fastgpt.kernels import limits
from fastgpt.ops import _checks


def _check(q, k, v, causal=True, dropout_p=0.0, scale=None, key_start=None):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.tensor("attention", name, t, ndim=4)
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != D or v.shape != k.shape:
        raise ValueError(
            f"fastgpt.ops.attention: k and v must be (B, H, Tk, D) = ({B}, {H}, Tk, {D}) like q {tuple(q.shape)}, "
            f"got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if Tq > k.shape[2]:
        raise ValueError(f"fastgpt.ops.attention: q has {Tq} positions but k only {k.shape[2]}; need Tq <= Tk")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"fastgpt.ops.attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"fastgpt.ops.attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    _checks.features("attention", "q", q, "D")
    _checks.flag("attention", "causal", causal)
    _checks.number("attention", "dropout_p", dropout_p, lambda p: 0.0 <= p < 1.0, "a number in [0, 1)")
    if scale is not None:
        _checks.number("attention", "scale", scale, lambda s: s > 0, "a positive finite number or None")
    if key_start is not None:
        if not isinstance(key_start, torch.Tensor) or key_start.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"fastgpt.ops.attention: key_start must be an int32/int64 tensor of shape ({B},) or None, "
                            f"got {key_start.dtype if isinstance(key_start, torch.Tensor) else type(key_start).__name__}")
        if tuple(key_start.shape) != (B,):
            raise ValueError(f"fastgpt.ops.attention: key_start must have shape ({B},) (one first valid key per row), got {tuple(key_start.shape)}")
        if key_start.device != q.device:
            raise ValueError(f"fastgpt.ops.attention: key_start is on {key_start.device} but q is on {q.device}")


def _why_not(name, q, k, v, causal=True, dropout_p=0.0, scale=None, key_start=None):
    if key_start is not None and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return "the Triton kernel's backward has no key padding mask (key_start): only calls without gradients"
    if q.shape[-1] not in limits.ATTENTION_HEAD_DIMS:
        return f"the Triton kernel supports head dims {limits.ATTENTION_HEAD_DIMS}, got {q.shape[-1]}"
    if q.shape[0] * q.shape[1] > limits.ATTENTION_MAX_BATCH_HEADS:
        return f"the Triton kernel supports B * n_head <= {limits.ATTENTION_MAX_BATCH_HEADS}, got {q.shape[0] * q.shape[1]}"
    return backends.triton_why_not(q, limits.DTYPES) or limits.interpreter_dot_why_not(q)


def _probe(device, dtype, B, T, C, H):
    q = torch.empty(B, H, T, C // H, device=device, dtype=dtype)
    return q, q, q


backends.register(backends.OpSpec(
    name="attention", backends=("reference", "triton"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=lambda q, *args, **kwargs: ("triton",) if q.is_cuda else (),
))


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, dropout_p: float = 0.0, scale=None,
              key_start: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T * scale + causal mask) v, like ``F.scaled_dot_product_attention``.

    q (B, H, Tq, D); k, v (B, H, Tk, D) with Tq <= Tk; strided views are fine. Returns
    (B, H, Tq, D) in q's dtype. scale defaults to 1/sqrt(D). With Tq < Tk the causal mask is
    aligned bottom-right (query i sees keys j <= i + Tk - Tq), which is what a KV cache needs.
    Dropout on the attention weights; its seed comes from torch's default generator, so
    ``torch.manual_seed`` makes it reproducible.

    key_start: None, or an int (B,) tensor for left-padded batches: row b's keys j < key_start[b]
    are masked out. A query that is left with no key (a padding position, under the causal mask)
    outputs 0, and its gradients are 0. The ``triton`` backend takes it in calls without gradients
    (generation); with gradients it is the reference's.
    """
    name = backends.backend_for("attention", q, k, v, causal, dropout_p, scale, key_start)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if name == "reference":
        return reference.attention(q, k, v, causal, dropout_p, scale, key_start)
    # Drawn even without dropout so the call has one shape under torch.compile; cheap on CPU.
    seed = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64) if dropout_p > 0 else torch.zeros(1, dtype=torch.int64)
    if key_start is not None:  # no gradients (see _why_not): the forward kernel alone
        return _attention_key_padded_triton(q, k, v, key_start.to(torch.int32), causal, float(dropout_p), scale, seed)
    return _attention_triton(q, k, v, causal, float(dropout_p), scale, seed)[0]


@torch.library.custom_op("fastgpt::attention", mutates_args=())
def _attention_triton(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, dropout_p: float, scale: float, seed: Tensor
) -> tuple[Tensor, Tensor]:
    from fastgpt.kernels.attention import attention_fwd

    return attention_fwd(q, k, v, causal, scale, dropout_p, int(seed.item()))


@_attention_triton.register_fake
def _(q, k, v, causal, dropout_p, scale, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("fastgpt::attention_key_padded", mutates_args=())
def _attention_key_padded_triton(
    q: Tensor, k: Tensor, v: Tensor, key_start: Tensor, causal: bool, dropout_p: float, scale: float, seed: Tensor
) -> Tensor:
    from fastgpt.kernels.attention import attention_fwd

    return attention_fwd(q, k, v, causal, scale, dropout_p, int(seed.item()), key_padding_start=key_start)[0]


@_attention_key_padded_triton.register_fake
def _(q, k, v, key_start, causal, dropout_p, scale, seed):
    return q.new_empty(q.shape)


@torch.library.custom_op("fastgpt::attention_backward", mutates_args=())
def _attention_backward_triton(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
    causal: bool, dropout_p: float, scale: float, seed: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    from fastgpt.kernels.attention import attention_bwd

    return attention_bwd(do, q, k, v, o, lse, causal, scale, dropout_p, int(seed.item()))


@_attention_backward_triton.register_fake
def _(do, q, k, v, o, lse, causal, dropout_p, scale, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, dropout_p, scale, seed = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, seed)
    ctx.causal, ctx.dropout_p, ctx.scale = causal, dropout_p, scale


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, seed = ctx.saved_tensors
    dq, dk, dv = _attention_backward_triton(do, q, k, v, o, lse, ctx.causal, ctx.dropout_p, ctx.scale, seed)
    return dq, dk, dv, None, None, None, None


_attention_triton.register_autograd(_backward, setup_context=_setup_context)
