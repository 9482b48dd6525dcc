"""The deterministic column sum shared by the backward passes that reduce per-program partials
(LayerNorm's dweight/dbias, bias+GELU's dbias): no atomics, the same order on every run."""
import triton
import triton.language as tl

from fastgpt.kernels._launch import num_sms

# Elements of the fp32 accumulator tile (BLOCK_G x BLOCK_N): 32 per thread at 4 warps.
TILE_ELEMENTS = 4096
NUM_WARPS = 4
# Column block widths, widest first: 32 fp32 columns are one 128-byte line per partial row; the
# narrowest, 4 columns, is one 16-byte vector.
BLOCK_NS = (32, 16, 8, 4)


@triton.jit
def _column_sum_kernel(Part_ptr, Out_ptr, Out2_ptr, G, N, N1,
                       BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HAS_OUT2: tl.constexpr):
    """Sum a (G, N) fp32 buffer of partials over G, in a fixed order.

    Grid: (cdiv(N, BLOCK_N),); program j reduces columns [j*BLOCK_N, (j+1)*BLOCK_N).
    Tiles: BLOCK_G x BLOCK_N; the loop walks G in steps of BLOCK_G, then one tl.sum over
    axis 0 -- the same order on every run, hence deterministic.
    Pointers: Part (G, N) fp32 contiguous; Out (N1,) and, with HAS_OUT2, Out2 (N - N1,) in the
    outputs' dtype: columns [0, N1) go to Out, the rest to Out2 (two reductions, one launch).
    On-chip: the BLOCK_G x BLOCK_N fp32 accumulator.
    HBM bytes: 4 * G * N read, sizeof(out dtype) * N written. Accumulation: fp32.
    Constraints: none beyond G, N >= 1 (N1 = N without HAS_OUT2).
    """
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & col_mask[None, :]
        acc += tl.load(Part_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(Out_ptr + cols, total.to(Out_ptr.dtype.element_ty), mask=cols < N1)
    if HAS_OUT2:
        tl.store(Out2_ptr + (cols - N1), total.to(Out2_ptr.dtype.element_ty), mask=(cols >= N1) & col_mask)


def column_block(N, device):
    """Column block width for N columns: the widest in ``BLOCK_NS`` that still gives every SM of
    ``device`` a program (at least one block per SM), else the narrowest."""
    sms = num_sms(device)
    return next((b for b in BLOCK_NS if triton.cdiv(N, b) >= sms), BLOCK_NS[-1])


def column_sum(part, out, out2=None):
    """out[n] = sum_g part[g, n] for a contiguous (G, N) fp32 ``part``; with ``out2`` the first
    out.numel() columns go to ``out`` and the rest to ``out2``. Launched on the current device
    (the caller's ``on_device``); the order of the sums depends only on G, N and the device's
    SM count."""
    G, N = part.shape
    n1 = out.numel()
    if n1 + (0 if out2 is None else out2.numel()) != N:
        raise ValueError(f"outputs hold {n1} + {0 if out2 is None else out2.numel()} columns, part has {N}")
    block_n = column_block(N, part.device)
    _column_sum_kernel[(triton.cdiv(N, block_n),)](
        part, out, out if out2 is None else out2, G, N, n1,
        BLOCK_G=TILE_ELEMENTS // block_n, BLOCK_N=block_n, HAS_OUT2=out2 is not None,
        num_warps=NUM_WARPS, num_stages=1)
    return out if out2 is None else (out, out2)
