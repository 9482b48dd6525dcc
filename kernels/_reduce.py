"""The deterministic column sum shared by the backward passes that reduce per-program partials
(LayerNorm's dweight/dbias, bias+GELU's dbias): no atomics, the same order on every run."""
import triton
import triton.language as tl

# Narrow column blocks (one 128-byte line of fp32 per partial row), so that even N = 768 gives
# the reduction a few dozen programs.
BLOCK_G = 128
BLOCK_N = 32
NUM_WARPS = 4


@triton.jit
def _column_sum_kernel(Part_ptr, Out_ptr, G, N, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """Sum a (G, N) fp32 buffer of partials over G, in a fixed order.

    Grid: (cdiv(N, BLOCK_N),); program j reduces columns [j*BLOCK_N, (j+1)*BLOCK_N).
    Tiles: BLOCK_G x BLOCK_N; the loop walks G in steps of BLOCK_G, then one tl.sum over
    axis 0 -- the same order on every run, hence deterministic.
    Pointers: Part (G, N) fp32 contiguous; Out (N,) in the output's dtype.
    On-chip: the BLOCK_G x BLOCK_N fp32 accumulator.
    HBM bytes: 4 * G * N read, sizeof(out dtype) * N written. Accumulation: fp32.
    Constraints: none beyond G, N >= 1.
    """
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & col_mask[None, :]
        acc += tl.load(Part_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
    tl.store(Out_ptr + cols, tl.sum(acc, axis=0).to(Out_ptr.dtype.element_ty), mask=col_mask)


def column_sum(part, out):
    """out[n] = sum_g part[g, n] for a contiguous (G, N) fp32 ``part``; launched on the current
    device (the caller's ``on_device``)."""
    G, N = part.shape
    _column_sum_kernel[(triton.cdiv(N, BLOCK_N),)](part, out, G, N, BLOCK_G=BLOCK_G, BLOCK_N=BLOCK_N,
                                                   num_warps=NUM_WARPS, num_stages=1)
    return out
