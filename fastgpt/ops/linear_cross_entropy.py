"""fastgpt.ops.linear_cross_entropy: the lm_head matmul and the cross-entropy loss in chunks of
rows, so the (N, V) logits of a batch never exist.

For each chunk of rows: logits = x_chunk @ weight^T (cuBLAS, or the CPU's GEMM); then the loss
and, over the logits in place, their gradient (fp32 statistics; a Triton kernel on the
``triton`` backend, PyTorch on ``reference``); then dx_chunk = grad @ weight and
dweight += grad^T @ x_chunk. So the gradient of the summed loss is computed during the forward
and the backward only scales it by the upstream gradient (and 1/count for 'mean').

Extra memory at the peak: one chunk's logits (``reference`` also holds their fp32
log-softmax), an fp32 (V, C) accumulator for dweight, held from the forward to the backward (it
becomes the gradient of an fp32 weight), and dx (N, C). The chunk is sized from N, V and the
free memory (:func:`pick_chunk_rows`); ``chunk_rows=`` or FASTGPT_LOSS_CHUNK_ROWS overrides it.

Targets outside [0, V) other than ignore_index are an error. CPU tensors are checked on the
host (a ValueError naming the value). CUDA tensors are checked without a host sync by
``torch._assert_async`` — a device-side assert, as ``F.cross_entropy`` raises there, which
leaves the CUDA context unusable (measured on an H200, torch 2.11: the call returns in 0.05 ms
with 45 ms of work queued, once its kernel is loaded); FASTGPT_CHECK_TARGETS=1 checks on the
host instead (one sync per call) for a readable ValueError. Both run inside the op, so under
``torch.compile`` too.
"""
import os

import torch
from torch import Tensor

from fastgpt import backends
from fastgpt.kernels import limits
from fastgpt.ops import _checks

REDUCTIONS = ("mean", "sum", "none")
CHUNK_ROWS_ENV = "FASTGPT_LOSS_CHUNK_ROWS"
CHECK_TARGETS_ENV = "FASTGPT_CHECK_TARGETS"
# One chunk's logits (and working copies) may take 1/16 of the free GPU memory, at most
# CUDA_BUDGET: >= 2048 rows of GPT-2's 50304 logits in bf16, enough for the three matmuls
# per chunk to run near cuBLAS's peak. On the CPU a fixed CPU_BUDGET.
CUDA_BUDGET = 256 * 2**20
CPU_BUDGET = 64 * 2**20
PROBE_VOCAB = 50304  # GPT-2's padded vocabulary, for report()


def _check(x, weight, targets, ignore_index=-1, reduction="mean", chunk_rows=None):
    op = "linear_cross_entropy"
    _checks.tensor(op, "x", x)
    if x.dim() not in (2, 3):
        raise ValueError(f"fastgpt.ops.{op}: x must be (N, C) or (B, T, C), got shape {tuple(x.shape)}")
    _checks.tensor(op, "weight", weight, ndim=2)
    if weight.shape[1] != x.shape[-1] or weight.shape[0] < 1:
        raise ValueError(f"fastgpt.ops.{op}: weight must be (V, C) = (V, {x.shape[-1]}) with V >= 1, got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"fastgpt.ops.{op}: weight is on {weight.device} but x is on {x.device}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"fastgpt.ops.{op}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise TypeError(f"fastgpt.ops.{op}: targets must be int64 (torch.long), got {targets.dtype}")
    if tuple(targets.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"fastgpt.ops.{op}: targets must have shape {tuple(x.shape[:-1])} (x's without C), got {tuple(targets.shape)}")
    if targets.device != x.device:
        raise ValueError(f"fastgpt.ops.{op}: targets is on {targets.device} but x is on {x.device}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"fastgpt.ops.{op}: ignore_index must be an int, got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"fastgpt.ops.{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1):
        raise ValueError(f"fastgpt.ops.{op}: chunk_rows must be a positive int or None (automatic), got {chunk_rows!r}")


def _why_not(name, x, weight, targets, *args, **kwargs):
    return backends.triton_why_not(x, limits.DTYPES)


def _probe(device, dtype, B, T, C, H):
    weight = torch.empty(1, C, device=device, dtype=dtype).expand(PROBE_VOCAB, C)  # no (V, C) allocation
    return torch.empty(B, T, C, device=device, dtype=dtype), weight, torch.empty(B, T, device=device, dtype=torch.int64)


backends.register(backends.OpSpec(
    name="linear_cross_entropy", backends=("reference", "triton"), check=_check, why_not=_why_not, probe=_probe,
    auto_order=lambda x, *args, **kwargs: ("triton",) if x.is_cuda else (),
))


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -1, reduction: str = "mean",
                         chunk_rows=None) -> Tensor:
    """Cross-entropy of the logits ``x @ weight^T`` against ``targets``, without the logits.

    x (N, C) or (B, T, C); weight (V, C) (the tied ``lm_head``/``wte`` weight); targets (N,) or
    (B, T) int64 in [0, V), or ignore_index. The same as ``fastgpt.reference.linear_cross_entropy``
    (``F.cross_entropy(F.linear(x, weight), targets, ignore_index=...)`` with fp32 log-softmax):
    the logits are rounded to x's dtype (the autocast dtype under autocast), the logsumexp and
    the loss are fp32 whatever the input dtype (fp64 for fp64 inputs).

    reduction: 'mean' over the rows not ignored — 0 when every row is ignored (convention:
    ``F.cross_entropy`` gives NaN there), with zero gradients; 'sum'; or 'none': a loss per
    target (0 where ignored) shaped like targets. Returns an fp32 tensor.
    chunk_rows: rows per chunk; None picks it from N, V and the free memory (:func:`pick_chunk_rows`).

    Differentiable once in x and weight. For 'mean' and 'sum' the gradients are computed in
    the forward (only when grad mode is on and x or weight requires grad) and the backward
    scales them; for 'none', whose upstream gradient may differ per row, the backward runs the
    chunks again with it.
    """
    name = backends.backend_for("linear_cross_entropy", x, weight, targets, ignore_index, reduction, chunk_rows)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    x2 = _checks.cast(x.reshape(-1, x.shape[-1]), dtype)
    grad = torch.is_grad_enabled()
    loss = _linear_cross_entropy(x2, weight, targets.reshape(-1), ignore_index, reduction, chunk_rows or 0, name,
                                 grad and x2.requires_grad, grad and weight.requires_grad)[0]
    return loss.view(targets.shape) if reduction == "none" else loss


def pick_chunk_rows(N: int, V: int, dtype: torch.dtype, device: torch.device, backend: str) -> int:
    """Rows per chunk for N rows of V logits in ``dtype``: FASTGPT_LOSS_CHUNK_ROWS if set, else
    the fewest chunks whose logits fit a budget (1/16 of the free memory, at most CUDA_BUDGET, on
    a GPU; CPU_BUDGET on the CPU), of about equal size (no sliver of a last chunk running the
    matmuls at low efficiency), a multiple of 8 rows where the budget allows; at most N."""
    env = os.environ.get(CHUNK_ROWS_ENV)
    if env:
        try:
            rows = int(env)
        except ValueError:
            rows = 0
        if rows < 1:
            raise ValueError(f"{CHUNK_ROWS_ENV} must be a positive integer (rows per chunk), got {env!r}")
        return min(rows, max(N, 1))
    elem = torch.finfo(dtype).bits // 8
    # bytes per logit: the chunk's logits (the Triton kernel works in place), plus the reference's
    # fp32 log-softmax (fp64 for fp64)
    per_logit = elem + (max(elem, 4) if backend == "reference" else 0)
    if device.type == "cuda":
        budget = min(torch.cuda.mem_get_info(device)[0] // 16, CUDA_BUDGET)
    else:
        budget = CPU_BUDGET
    limit = max(1, budget // (V * per_logit))
    if limit >= N:
        return max(N, 1)
    if limit >= 64:
        limit = limit // 64 * 64
    rows = -(-N // -(-N // limit))  # N over the fewest chunks of at most `limit` rows, rounded up
    return min(limit, -(-rows // 8) * 8)


# ---------------------------------------------------------------------------------------------
# the chunked computation, shared by both backends


def _check_targets(targets, V, ignore_index):
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    msg = f"fastgpt.ops.linear_cross_entropy: targets must be in [0, {V}) or ignore_index ({ignore_index})"
    if targets.is_cuda and os.environ.get(CHECK_TARGETS_ENV) != "1":
        torch._assert_async(~bad.any(), msg)  # a device-side assert: no host sync (but on its first call)
    elif bad.any():
        raise ValueError(f"{msg}, got {targets[bad][0].item()}")


def _cross_entropy_chunk_reference(logits, targets, losses, ignore_index, row_scale, grad):
    """The reference backend's twin of kernels.cross_entropy.cross_entropy_fwd_bwd: the same
    arguments and results, in PyTorch (one fp32 log-softmax of the chunk, reused for the
    gradient). Returns the gradient of the logits (in their dtype) when ``grad``."""
    logp = torch.log_softmax(logits, dim=1, dtype=losses.dtype)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)[:, None]
    losses.copy_(logp.gather(1, safe).squeeze(1).neg_().masked_fill_(~valid, 0.0))
    if not grad:
        return None
    scale = valid.to(logp.dtype) if row_scale is None else row_scale.masked_fill(~valid, 0.0)
    dlogits = logp.exp_().mul_(scale[:, None]).scatter_add_(1, safe, -scale[:, None])  # (softmax - onehot) * scale
    return dlogits if dlogits.dtype == logits.dtype else logits.copy_(dlogits)


def _cross_entropy_chunk_triton(logits, targets, losses, ignore_index, row_scale, grad):
    from fastgpt.kernels.cross_entropy import cross_entropy_fwd_bwd

    cross_entropy_fwd_bwd(logits, targets, losses, ignore_index, row_scale, grad)
    return logits if grad else None  # the gradient, written over the logits


def _add_product(acc, a, b):
    """acc += a @ b, acc fp32 (or fp64) and a, b possibly 16-bit."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:  # cuBLAS: 16-bit inputs, fp32 accumulation and output, no (V, C) temporary
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.add_(torch.mm(a, b))


def _chunked(x, weight, targets, ignore_index, rows, backend, need_dx, need_dw, row_scale=None):
    """(losses (N,), dx (N, C) in x's dtype or None, dweight (V, C) fp32 or None): the per-row
    losses and the gradients of sum_i row_scale_i * loss_i (row_scale None: every row 1)."""
    N, C = x.shape
    V = weight.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, targets = x.contiguous(), targets.contiguous()
    w = weight.to(x.dtype)
    losses = x.new_empty(N, dtype=acc)
    dx = x.new_empty(N, C) if need_dx else None
    dw = x.new_zeros(V, C, dtype=acc) if need_dw else None
    if N == 0:
        return losses, dx, dw
    rows = min(rows or pick_chunk_rows(N, V, x.dtype, x.device, backend), N)
    cross_entropy = _cross_entropy_chunk_triton if backend == "triton" else _cross_entropy_chunk_reference
    buf = x.new_empty(rows, V)
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, N, rows):
            end = min(start + rows, N)
            xc = x[start:end]
            logits = torch.mm(xc, w.t(), out=buf[: end - start])  # (rows, V)
            dlogits = cross_entropy(logits, targets[start:end], losses[start:end], ignore_index,
                                    None if row_scale is None else row_scale[start:end], need_dx or need_dw)
            if need_dx:
                torch.mm(dlogits, w, out=dx[start:end])
            if need_dw:
                _add_product(dw, dlogits.t(), xc)
    return losses, dx, dw


# ---------------------------------------------------------------------------------------------
# the custom ops: the forward (with the gradients of the summed loss), and the backward of
# reduction='none'


@torch.library.custom_op("fastgpt::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, reduction: str, chunk_rows: int, backend: str,
    need_dx: bool, need_dw: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, dx of the summed loss, dweight of the summed loss (fp32), scale): x (N, C),
    targets (N,); loss () or (N,) for 'none'; scale: what 'mean' divides by, inverted."""
    _check_targets(targets, weight.shape[0], ignore_index)
    grads = reduction != "none"
    losses, dx, dw = _chunked(x, weight, targets, ignore_index, chunk_rows, backend, need_dx and grads, need_dw and grads)
    if reduction == "none":
        loss, scale = losses, losses.new_ones(())
    else:
        count = (targets != ignore_index).sum() if reduction == "mean" else None
        scale = losses.new_ones(()) if count is None else 1.0 / count.clamp(min=1).to(losses.dtype)
        loss = losses.sum() * scale
    return loss, x.new_empty(0) if dx is None else dx, losses.new_empty(0) if dw is None else dw, scale


@_linear_cross_entropy.register_fake
def _(x, weight, targets, ignore_index, reduction, chunk_rows, backend, need_dx, need_dw):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    grads = reduction != "none"
    loss = x.new_empty((x.shape[0],) if reduction == "none" else (), dtype=acc)
    dx = x.new_empty(x.shape if need_dx and grads else (0,))
    dw = x.new_empty(weight.shape if need_dw and grads else (0,), dtype=acc)
    return loss, dx, dw, x.new_empty((), dtype=acc)


@torch.library.custom_op("fastgpt::linear_cross_entropy_backward", mutates_args=())
def _linear_cross_entropy_backward(
    dlosses: Tensor, x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk_rows: int, backend: str,
    need_dx: bool, need_dw: bool,
) -> tuple[Tensor, Tensor]:
    """(dx, dweight) for reduction='none': the chunks again, each row's gradient scaled by its dloss."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    _, dx, dw = _chunked(x, weight, targets, ignore_index, chunk_rows, backend, need_dx, need_dw,
                         row_scale=dlosses.to(acc).contiguous())
    return x.new_empty(0) if dx is None else dx, weight.new_empty(0) if dw is None else dw.to(weight.dtype)


@_linear_cross_entropy_backward.register_fake
def _(dlosses, x, weight, targets, ignore_index, chunk_rows, backend, need_dx, need_dw):
    return x.new_empty(x.shape if need_dx else (0,)), weight.new_empty(weight.shape if need_dw else (0,))


def _setup_context(ctx, inputs, output):
    x, weight, targets, ignore_index, reduction, chunk_rows, backend, need_dx, need_dw = inputs
    _loss, dx, dw, scale = output
    ctx.reduction, ctx.weight_dtype, ctx.need_dx, ctx.need_dw = reduction, weight.dtype, need_dx, need_dw
    ctx.args = (ignore_index, chunk_rows, backend)
    if reduction == "none":
        ctx.save_for_backward(x, weight, targets)
    else:
        ctx.save_for_backward(dx, dw, scale)
    ctx.mark_non_differentiable(dx, dw, scale)


def _backward(ctx, dloss, _ddx, _ddw, _dscale):
    if ctx.reduction == "none":
        x, weight, targets = ctx.saved_tensors
        dx, dw = _linear_cross_entropy_backward(dloss, x, weight, targets, *ctx.args, ctx.need_dx, ctx.need_dw)
    else:
        dx_sum, dw_sum, scale = ctx.saved_tensors
        s = dloss.to(scale.dtype) * scale  # in fp32: a 16-bit copy of 1/count would be off by up to 2**-9
        # Eagerly, scaled in place: no second (V, C) at the start of the backward, the step's peak.
        # Autograd's version check then refuses a second backward through this graph (retain_graph).
        inplace = not torch.compiler.is_compiling()
        dx = _scaled(dx_sum, s, dx_sum.dtype, inplace) if ctx.need_dx else None
        dw = _scaled(dw_sum, s, ctx.weight_dtype, inplace) if ctx.need_dw else None
    return (dx if ctx.need_dx else None, dw if ctx.need_dw else None) + (None,) * 7


def _scaled(t, s, dtype, inplace):
    """t * s, computed in s's precision, as ``dtype``."""
    if t.dtype == s.dtype == dtype:
        return t.mul_(s) if inplace else t * s
    if t.dtype == s.dtype:  # the fp32 accumulator into a 16-bit weight's gradient: one pass, no fp32 copy
        return torch.mul(t, s, out=t.new_empty(t.shape, dtype=dtype))
    return (t.to(s.dtype) * s).to(dtype)  # a 16-bit dx


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)
