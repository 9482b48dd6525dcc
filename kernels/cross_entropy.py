"""Cross-entropy of a chunk of logits, with its gradient written in place (Triton), and the launcher.

``cross_entropy_fwd_bwd(logits, targets, losses, ignore_index, row_scale, grad)`` on a 2-D
(M, V) chunk of logits: per row the fp32 loss ``logsumexp(z) - z[target]`` (0 for rows whose
target is ``ignore_index``) and, when ``grad``, the gradient of ``row_scale[i] * loss_i`` with
respect to the logits, ``(softmax(z) - onehot(target)) * row_scale[i]``, written over the
logits. ``fastgpt.ops.linear_cross_entropy`` calls it once per chunk of rows between the
lm_head matmul that produces the chunk and the two matmuls that turn its gradient into dx and
dweight, so the (N, V) logits of a whole batch never exist.
"""

import torch
import triton
import triton.language as tl

from fastgpt.kernels._launch import on_device
from fastgpt.kernels.limits import DTYPES as _DTYPES

# Widest step of the loop over a row: 16 fp32 values per thread at 8 warps (no spills on
# sm_80/sm_90, tests/test_aot_loss.py). Any V works: wider rows take more steps.
MAX_BLOCK_V = 4096


def launch_config(V: int) -> dict:
    """The launch configuration for rows of ``V`` logits.

    BLOCK_V:   columns per step of the loop over a row: next_pow2(V) up to MAX_BLOCK_V, so a
               GPT-2 row (V = 50304) takes 13 steps of 4096 per pass.
    num_warps: 4 up to 1024 columns, else 8 (at most 16 fp32 values per thread per step).
    """
    if V < 1:
        raise ValueError(f"V must be >= 1, got {V}")
    block_v = min(triton.next_power_of_2(V), MAX_BLOCK_V)
    return {"BLOCK_V": block_v, "num_warps": 4 if block_v <= 1024 else 8}


# Online logsumexp (Milakov & Gimelshein 2018), one row, blocks b = 1..n of the V logits:
#   m_b = max(m_{b-1}, max(z_b)),   d_b = d_{b-1} * exp(m_{b-1} - m_b) + sum(exp(z_b - m_b)),
# so after the last block lse = m_n + log(d_n) with one read of the row. The loss is
# lse - z[target]; its gradient is d loss / d z_j = softmax(z)_j - [j == target]
# = exp(z_j - lse) - [j == target], which the second read of the row writes in place.
@triton.jit
def _cross_entropy_fwd_bwd_kernel(
    Logits_ptr, Targets_ptr, Loss_ptr, RowScale_ptr,
    stride_logits_row, V, ignore_index,
    BLOCK_V: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    """Loss of one row of logits and, if COMPUTE_GRAD, its gradient in place.

    Grid: (M,); program i handles row i.
    Tiles: BLOCK_V columns per loop step (columns >= V masked); two passes over the row when
    COMPUTE_GRAD (statistics, then gradient), one otherwise.
    Pointers: Logits (M, V) fp32/fp16/bf16, row stride stride_logits_row, unit column stride,
              overwritten with the gradient in its own dtype when COMPUTE_GRAD; Targets (M,)
              int64; Loss (M,) fp32; RowScale (M,) fp32 (read only if HAS_ROW_SCALE, else 1).
    On-chip: the running max and sum (fp32 scalars) and one BLOCK_V block of the row.
    HBM bytes per logit: sizeof(dtype) (loss only) or 3 * sizeof(dtype) (loss and gradient),
    plus 12 bytes per row (target, loss, scale).
    Accumulation: fp32 (max, sum of exponentials, logsumexp, loss, gradient before the cast).
    Constraints: BLOCK_V <= MAX_BLOCK_V (a power of two); targets outside [0, V) other than
    ignore_index are never dereferenced (their loss is garbage: the op checks them first).
    """
    tl.static_assert(BLOCK_V <= 16384, "one block of the row must fit in registers")
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * stride may exceed 2**31
    row_ptr = Logits_ptr + row * stride_logits_row
    target = tl.load(Targets_ptr + row)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < V)
    cols = tl.arange(0, BLOCK_V)

    z_target = tl.load(row_ptr + target, mask=in_range, other=0.0).to(tl.float32)
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        z = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    tl.store(Loss_ptr + row, tl.where(valid, lse - z_target, 0.0))

    if COMPUTE_GRAD:
        if HAS_ROW_SCALE:
            scale = tl.load(RowScale_ptr + row).to(tl.float32)
        else:
            scale = 1.0
        scale = tl.where(valid, scale, 0.0)  # ignored rows: zero gradient
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            mask = offs < V
            z = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = (tl.exp(z - lse) - tl.where(offs == target, 1.0, 0.0)) * scale
            tl.store(row_ptr + offs, g.to(Logits_ptr.dtype.element_ty), mask=mask)


def cross_entropy_fwd_bwd(logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, ignore_index: int,
                          row_scale=None, grad: bool = True):
    """Per-row cross-entropy of ``logits`` and, if ``grad``, its gradient in place.

    logits:       (M, V) float32/float16/bfloat16 with unit column stride (any row stride);
                  overwritten with ``(softmax - onehot(target)) * row_scale`` when ``grad``
                  (zero rows for ignored targets).
    targets:      (M,) int64 on the same device, contiguous; values in [0, V) or ignore_index.
    losses:       (M,) float32, contiguous: written with the losses (0 for ignored rows).
    ignore_index: the target value whose rows contribute nothing.
    row_scale:    (M,) float32 contiguous, or None (1 for every row): the upstream gradient
                  of each row's loss.
    Returns ``losses``. Raises ValueError on a wrong shape, dtype, device or layout.
    """
    if logits.ndim != 2 or logits.dtype not in _DTYPES:
        raise ValueError(f"logits must be 2-D (M, V) float32/float16/bfloat16, got {tuple(logits.shape)} {logits.dtype}")
    M, V = logits.shape
    if logits.stride(1) != 1 and V > 1:
        raise ValueError(f"logits must have unit column stride, got strides {logits.stride()}")
    for name, t, dtype in (("targets", targets, torch.int64), ("losses", losses, torch.float32),
                           ("row_scale", row_scale, torch.float32)):
        if t is None:
            continue
        if t.shape != (M,) or t.dtype != dtype or t.device != logits.device or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous ({M},) {dtype} tensor on {logits.device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    if M == 0:
        return losses
    cfg = launch_config(V)
    with on_device(logits):
        _cross_entropy_fwd_bwd_kernel[(M,)](
            logits, targets, losses, row_scale if row_scale is not None else losses,
            logits.stride(0), V, ignore_index,
            BLOCK_V=cfg["BLOCK_V"], HAS_ROW_SCALE=row_scale is not None, COMPUTE_GRAD=grad,
            num_warps=cfg["num_warps"], num_stages=1,
        )
    return losses
