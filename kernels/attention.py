"""Fused causal flash-attention (forward and backward) with in-kernel dropout.

Host launchers:

    attention_fwd(q, k, v, causal, scale, dropout_p=0.0, seed=0) -> (o, lse)
    attention_bwd(do, q, k, v, o, lse, causal, scale, dropout_p=0.0, seed=0) -> (dq, dk, dv)
    dropout_mask(B, H, Tq, Tk, dropout_p, seed, device) -> bool (B, H, Tq, Tk)

Shapes (nanoGPT names): q is (B, nh, Tq, hs), k and v are (B, nh, Tk, hs) with Tq <= Tk.
Inputs may be strided views (e.g. the q, k, v views of one (B, T, 3, nh, hs) projection
output): every kernel takes all four strides of every tensor and reads views in place. The one
requirement (the alignment contract, see ``_aligned16``) is 16-byte-aligned data, a unit
head-dim stride and batch/head/time strides that are multiples of 16 elements, which every
natural layout meets; an input that does not is copied once, so the kernels always run with
16-byte vector loads.

Causal masking is aligned bottom-right: query i sees key j iff j <= i + (Tk - Tq), so with a
KV cache (Tq < Tk) the last query sees every key; with Tq == Tk this is the usual
lower-triangular mask.

``lse`` is the natural-log logsumexp of each row of ``scale * q @ k^T`` (masked), fp32, shape
(B, nh, Tq). Internally the kernels work in base 2 (exp2 with log2(e) folded into the scale)
and convert at the boundary.

Dropout RNG: Philox-4x32-10 (``tl.philox``) keyed by the caller's 64-bit seed, with the
128-bit counter (j, i, b * nh + h, 0) -- three 32-bit words, so no flattened index can overflow
whatever B, nh, Tq, Tk are. The keep decision for element (b, h, i, j) is therefore a pure
function of (seed, b, h, i, j) and of nothing about tiling or launch order: the backward
regenerates exactly the forward's mask, and ``dropout_mask`` returns it for tests. Keep iff
u >= p with u the top 24 bits of the first Philox output word over 2**24; kept probabilities
are scaled by 1 / (1 - p).

Precision: fp16 and bf16 inputs use tensor-core dots with fp32 accumulation; fp32 inputs use
IEEE fp32 dots (``input_precision="ieee"``, no TF32). Softmax statistics, the row sums
``delta`` and every accumulator are fp32.

Determinism: the backward uses no atomics. One kernel owns a KV block and loops over Q blocks
(dk, dv); another owns a Q block and loops over KV blocks (dq). Each output element is summed
in a fixed order, so repeated calls give bit-identical gradients (for a fixed config, which
the launchers choose deterministically from device, head dim, dtype, T and the device's
tuning table).
"""
import math

import torch
import triton
import triton.language as tl

from fastgpt.kernels import tuning
from fastgpt.kernels._launch import on_device
from fastgpt.kernels.limits import ATTENTION_HEAD_DIMS as SUPPORTED_HEAD_DIMS
from fastgpt.kernels.limits import ATTENTION_MAX_BATCH_HEADS, INTERPRETER_DOT_DTYPES, SHARED_MEMORY_PER_BLOCK
from fastgpt.kernels.limits import DTYPES as SUPPORTED_DTYPES

LOG2E = 1.4426950408889634

# =============================================================================================
# Forward: online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022).
#
# For one block of query rows, stream over key/value blocks j = 0, 1, ... keeping per row
#     m   = running max of the (base-2) logits  s2 = (q . k) * scale * log2(e)
#     l   = running sum of exp2(s2 - m)
#     acc = running sum of exp2(s2 - m) * keep / (1 - p) * v
# On a new block with logits S2 (BLOCK_M, BLOCK_N):
#     m_new = max(m, rowmax(S2));  alpha = exp2(m - m_new);  P = exp2(S2 - m_new)
#     l = alpha * l + rowsum(P);   acc = alpha * acc + (P * keep) @ V;  m = m_new
# At the end o = acc / ((1 - p) * l) and lse2 = m + log2(l) (stored as lse = lse2 * ln 2).
# Dropout acts on the normalised probabilities, so l sums the undropped P.
#
# Backward (per (b, h); S = scale * Q K^T, P = softmax(S), Z = keep / (1 - p), O = (P*Z) V):
#     dV    = (P*Z)^T dO
#     dP    = (dO V^T) * Z
#     dS    = P * (dP - delta),   delta_i = sum_j P_ij dP_ij = rowsum(dO * O)_i
#     dQ    = scale * dS K,        dK = scale * dS^T Q
# P is recomputed from the saved lse: P = exp2(S2 - lse * log2(e)). delta is computed once by
# the preprocess kernel. Masked entries have P = 0, hence dS = 0.
#
# Tiling and causal structure (shift = Tk - Tq; query i sees key j iff j <= i + shift):
# a query block [m0, m0 + BLOCK_M) sees every key in [0, m0 + shift + 1), so KV blocks wholly
# inside that prefix run without any mask ("full" blocks); the following few blocks up to
# min(Tk, m0 + BLOCK_M + shift) straddle the diagonal or the ragged end of Tk and run masked;
# blocks past that are never visited. The dk/dv kernel mirrors this over query blocks.
# =============================================================================================


# Alignment contract. The launchers pass only tensors whose data pointer is 16-byte aligned
# and whose batch, head and time strides are multiples of 16 elements (anything else is copied
# first; every natural layout, the (B, T, 3, nh, hs) projection views included, qualifies).
# These helpers state that to the compiler, so tile loads are always 16-byte vectors and
# cp.async-pipelined, whatever Triton's own argument specialisation saw. Hints on the raw
# arguments would be dropped, hence hints on the derived pointers and offsets.
@triton.jit
def _aligned16(ptr, offset):
    """ptr + offset, a tile base inside a tensor that obeys the alignment contract."""
    return tl.multiple_of(ptr + offset, 16)


@triton.jit
def _rows16(offs, stride):
    """offs[:, None] * stride for a stride that is a multiple of 16 elements."""
    return tl.multiple_of(offs[:, None] * stride, [16, 16])


@triton.jit
def _cols16(offs, stride):
    """offs[None, :] * stride for a stride that is a multiple of 16 elements."""
    return tl.multiple_of(offs[None, :] * stride, [16, 16])


@triton.jit
def _attention_dropout_keep(seed, bh, rows, cols, dropout_p):
    """Keep mask for a tile: True where element (bh, row, col) survives dropout.

    rows, cols: int32 index tensors broadcastable against each other (e.g. (M, 1) and (1, N));
    the result has the broadcast shape. Philox-4x32-10, key = seed (64 bit), counter =
    (col, row, bh, 0); keep iff (top 24 bits of word 0) / 2**24 >= dropout_p.
    """
    zero = rows * 0 + cols * 0
    c0 = cols + zero
    c1 = rows + zero
    c2 = zero + bh
    r0, _, _, _ = tl.philox(seed, c0, c1, c2, zero)
    u = (r0 >> 8).to(tl.int32).to(tl.float32) * (1.0 / 16777216.0)
    return u >= dropout_p


@triton.jit
def _attention_fwd_inner(acc, l_i, m_i, q, K_bh, V_bh, stride_k_t, stride_k_d, stride_v_t,
                         stride_v_d, offs_m, lo, hi, Tk, shift, qk_scale, seed, bh, dropout_p,
                         BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                         MASKED: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One stretch [lo, hi) of KV blocks for one query block (see the comment block above)."""
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kt_tile = offs_d[:, None] * stride_k_d + _cols16(offs_n0, stride_k_t)  # (hs, BLOCK_N)
    v_tile = _rows16(offs_n0, stride_v_t) + offs_d[None, :] * stride_v_d  # (BLOCK_N, hs)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt_ptrs = _aligned16(K_bh, tl.cast(start_n, tl.int64) * stride_k_t) + kt_tile
        v_ptrs = _aligned16(V_bh, tl.cast(start_n, tl.int64) * stride_v_t) + v_tile
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < Tk, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if MASKED:
            valid = offs_n[None, :] < Tk
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
            qk = tl.where(valid, qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.exp2(qk)
        alpha = tl.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _attention_dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p)
            p = tl.where(keep, p, 0.0)
        if MASKED:
            v = tl.load(v_ptrs, mask=offs_n[:, None] < Tk, other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _query_block(H, Tq, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """The query block of this program: grid (cdiv(Tq, BLOCK_M), B * nh), heaviest causal
    blocks first. Returns (bh, b, h, m0, offs_m, row_mask), b and h as int64."""
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    bh = tl.program_id(1)
    m0 = start_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), m0, offs_m, offs_m < Tq


@triton.jit
def _query_rows_ptrs(X_ptr, b, h, m0, stride_b, stride_h, stride_t, stride_d,
                     BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Pointers to the (BLOCK_M, HEAD_DIM) tile of rows [m0, m0 + BLOCK_M) of head (b, h)."""
    X_blk = _aligned16(X_ptr, b * stride_b + h * stride_h + m0.to(tl.int64) * stride_t)
    return X_blk + _rows16(tl.arange(0, BLOCK_M), stride_t) + tl.arange(0, HEAD_DIM)[None, :] * stride_d


@triton.jit
def _load_query_rows(X_ptr, b, h, m0, row_mask, stride_b, stride_h, stride_t, stride_d,
                     BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """That tile's values; rows outside row_mask read as 0."""
    ptrs = _query_rows_ptrs(X_ptr, b, h, m0, stride_b, stride_h, stride_t, stride_d, BLOCK_M, HEAD_DIM)
    return tl.load(ptrs, mask=row_mask[:, None], other=0.0)


@triton.jit(do_not_specialize=["seed"])
def _attention_fwd_kernel(Q_ptr, K_ptr, V_ptr, O_ptr, LSE_ptr,
                          stride_q_b, stride_q_h, stride_q_t, stride_q_d,
                          stride_k_b, stride_k_h, stride_k_t, stride_k_d,
                          stride_v_b, stride_v_h, stride_v_t, stride_v_d,
                          stride_o_b, stride_o_h, stride_o_t, stride_o_d,
                          H, Tq, Tk, qk_scale, seed, dropout_p, keep_scale,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                          CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Attention forward: o = dropout(softmax(scale * q k^T + mask)) v and its logsumexp.

    Grid: (cdiv(Tq, BLOCK_M), B * nh). Program (m, bh) computes rows [m * BLOCK_M, +BLOCK_M)
    of o and lse for head bh; with CAUSAL the heaviest query blocks are launched first.
    Tiles: BLOCK_M query rows x BLOCK_N keys per step; HEAD_DIM = hs.
    Pointers: Q (B, nh, Tq, hs), K and V (B, nh, Tk, hs), any strides, dtype fp16/bf16/fp32;
    O (B, nh, Tq, hs) of q's dtype; LSE (B, nh, Tq) fp32 contiguous, natural log.
    On-chip: the q tile, acc (BLOCK_M, hs) fp32, m and l (BLOCK_M,) fp32; one K and one V tile
    per step. The (Tq, Tk) score matrix never leaves registers.
    Cost per (b, h): 4 * Tq * Tk * hs FLOPs (about half with CAUSAL); HBM reads q once and
    K, V once per query block: (Tq + 2 * Tk * cdiv(Tq, BLOCK_M)) * hs * elt bytes, writes
    Tq * (hs * elt + 4) bytes.
    Accumulation: fp32 (dots with fp32 accumulators; IEEE dots for fp32 inputs).
    Constraints: HEAD_DIM in {16, 32, 64, 128}; BLOCK_M, BLOCK_N powers of two >= 16; last-dim
    strides are passed but the launcher guarantees 1; Tq <= Tk (host checks).
    """
    tl.static_assert(HEAD_DIM == 16 or HEAD_DIM == 32 or HEAD_DIM == 64 or HEAD_DIM == 128)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
    bh, b, h, m0, offs_m, row_mask = _query_block(H, Tq, BLOCK_M, CAUSAL)
    shift = Tk - Tq
    q = _load_query_rows(Q_ptr, b, h, m0, row_mask, stride_q_b, stride_q_h, stride_q_t, stride_q_d,
                         BLOCK_M, HEAD_DIM)
    K_bh = _aligned16(K_ptr, b * stride_k_b + h * stride_k_h)
    V_bh = _aligned16(V_ptr, b * stride_v_b + h * stride_v_h)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        n_full = (m0 + shift + 1) // BLOCK_N * BLOCK_N
        n_end = tl.minimum(Tk, m0 + BLOCK_M + shift)
    else:
        n_full = Tk // BLOCK_N * BLOCK_N
        n_end = Tk
    # Blocks wholly visible to every row of this query block: no masking work.
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K_bh, V_bh, stride_k_t, stride_k_d,
                                         stride_v_t, stride_v_d, offs_m, 0, n_full, Tk, shift,
                                         qk_scale, seed, bh, dropout_p, BLOCK_N, HEAD_DIM, CAUSAL,
                                         False, DROPOUT, DOT_PRECISION)
    # Diagonal blocks and the ragged end of Tk.
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K_bh, V_bh, stride_k_t, stride_k_d,
                                         stride_v_t, stride_v_d, offs_m, n_full, n_end, Tk, shift,
                                         qk_scale, seed, bh, dropout_p, BLOCK_N, HEAD_DIM, CAUSAL,
                                         True, DROPOUT, DOT_PRECISION)

    # Every valid row sees key 0, which lies in the first visited block, so l_i > 0 there.
    lse2 = m_i + tl.log2(l_i)
    if DROPOUT:
        acc = acc * (keep_scale / l_i)[:, None]
    else:
        acc = acc / l_i[:, None]
    tl.store(_query_rows_ptrs(O_ptr, b, h, m0, stride_o_b, stride_o_h, stride_o_t, stride_o_d, BLOCK_M, HEAD_DIM),
             acc.to(O_ptr.dtype.element_ty), mask=row_mask[:, None])
    tl.store(LSE_ptr + bh.to(tl.int64) * Tq + offs_m, lse2 * 0.6931471805599453, mask=row_mask)


@triton.jit
def _attention_bwd_preprocess_kernel(O_ptr, DO_ptr, DELTA_ptr,
                                     stride_o_b, stride_o_h, stride_o_t, stride_o_d,
                                     stride_do_b, stride_do_h, stride_do_t, stride_do_d,
                                     H, Tq, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """delta = rowsum(o * do) in fp32.

    Grid: (cdiv(Tq, BLOCK_M), B * nh); one program reduces BLOCK_M rows of one head.
    Pointers: O and DO (B, nh, Tq, hs), any strides, fp16/bf16/fp32; DELTA (B, nh, Tq) fp32
    contiguous. HBM: 2 * hs * elt bytes read and 4 bytes written per row. Accumulation: fp32.
    """
    bh, b, h, m0, offs_m, row_mask = _query_block(H, Tq, BLOCK_M, False)
    o = _load_query_rows(O_ptr, b, h, m0, row_mask, stride_o_b, stride_o_h, stride_o_t, stride_o_d,
                         BLOCK_M, HEAD_DIM).to(tl.float32)
    do = _load_query_rows(DO_ptr, b, h, m0, row_mask, stride_do_b, stride_do_h, stride_do_t, stride_do_d,
                          BLOCK_M, HEAD_DIM).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    tl.store(DELTA_ptr + bh.to(tl.int64) * Tq + offs_m, delta, mask=row_mask)


@triton.jit
def _attention_bwd_dkdv_inner(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, DELTA_bh,
                              stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                              offs_n, lo, hi, Tq, Tk, shift, qk_scale, seed, bh, dropout_p,
                              keep_scale, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                              CAUSAL: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
                              DOT_PRECISION: tl.constexpr):
    """Query blocks [lo, hi) for one KV block; works on transposed (BLOCK_N, BLOCK_M) tiles."""
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qt_tile = offs_d[:, None] * stride_q_d + _cols16(offs_m0, stride_q_t)  # (hs, BLOCK_M)
    do_tile = _rows16(offs_m0, stride_do_t) + offs_d[None, :] * stride_do_d  # (BLOCK_M, hs)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        qt_ptrs = _aligned16(Q_bh, tl.cast(start_m, tl.int64) * stride_q_t) + qt_tile
        do_ptrs = _aligned16(DO_bh, tl.cast(start_m, tl.int64) * stride_do_t) + do_tile
        if MASKED:
            row_ok = offs_m < Tq
            qt = tl.load(qt_ptrs, mask=row_ok[None, :], other=0.0)
            lse2 = tl.load(LSE_bh + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        else:
            qt = tl.load(qt_ptrs)
            lse2 = tl.load(LSE_bh + offs_m) * 1.4426950408889634
        qkt = tl.dot(k, qt, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        pt = tl.exp2(qkt * qk_scale - lse2[None, :])
        if MASKED:
            valid = row_ok[None, :] & (offs_n[:, None] < Tk)
            if CAUSAL:
                valid = valid & (offs_n[:, None] <= offs_m[None, :] + shift)
            pt = tl.where(valid, pt, 0.0)
        if MASKED:
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            delta = tl.load(DELTA_bh + offs_m, mask=row_ok, other=0.0)
        else:
            do = tl.load(do_ptrs)
            delta = tl.load(DELTA_bh + offs_m)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        if DROPOUT:
            keep = _attention_dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], dropout_p)
            dv = tl.dot(tl.where(keep, pt * keep_scale, 0.0).to(do.dtype), do, dv,
                        input_precision=DOT_PRECISION)
            dpt = tl.where(keep, dpt * keep_scale, 0.0)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["seed"])
def _attention_bwd_dkdv_kernel(Q_ptr, K_ptr, V_ptr, DO_ptr, LSE_ptr, DELTA_ptr, DK_ptr, DV_ptr,
                               stride_q_b, stride_q_h, stride_q_t, stride_q_d,
                               stride_k_b, stride_k_h, stride_k_t, stride_k_d,
                               stride_v_b, stride_v_h, stride_v_t, stride_v_d,
                               stride_do_b, stride_do_h, stride_do_t, stride_do_d,
                               stride_dk_b, stride_dk_h, stride_dk_t, stride_dk_d,
                               stride_dv_b, stride_dv_h, stride_dv_t, stride_dv_d,
                               H, Tq, Tk, qk_scale, sm_scale, seed, dropout_p, keep_scale,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                               CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                               DOT_PRECISION: tl.constexpr):
    """Attention backward, key side: dk and dv for one block of keys.

    Grid: (cdiv(Tk, BLOCK_N), B * nh). Program (n, bh) owns keys [n * BLOCK_N, +BLOCK_N) of
    head bh and loops over the query blocks that can see them, BLOCK_M rows at a time:
    masked blocks at the causal diagonal, then unmasked ones, then the ragged end of Tq.
    Pointers: Q, DO (B, nh, Tq, hs); K, V, DK, DV (B, nh, Tk, hs); any strides; LSE (natural
    log) and DELTA (B, nh, Tq) fp32 contiguous. DK, DV have k's and v's dtypes.
    On-chip: k, v tiles and dk, dv (BLOCK_N, hs) fp32 accumulators for the whole loop; per
    step one q and one do tile, the (BLOCK_N, BLOCK_M) tiles of P^T and dS^T.
    Cost per (b, h): 8 * Tq * Tk * hs FLOPs (4 dots, recomputing S and dP; about half with
    CAUSAL); HBM reads K, V once and Q, dO, lse, delta once per key block.
    Accumulation: fp32. No atomics: each dk/dv element is written once by one program.
    Constraints as for the forward.
    """
    tl.static_assert(HEAD_DIM == 16 or HEAD_DIM == 32 or HEAD_DIM == 64 or HEAD_DIM == 128)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
    start_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n0 = start_n * BLOCK_N
    shift = Tk - Tq

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_nt = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_mask = offs_n < Tk
    K_blk = _aligned16(K_ptr, b * stride_k_b + h * stride_k_h + n0.to(tl.int64) * stride_k_t)
    V_blk = _aligned16(V_ptr, b * stride_v_b + h * stride_v_h + n0.to(tl.int64) * stride_v_t)
    k = tl.load(K_blk + _rows16(offs_nt, stride_k_t) + offs_d[None, :] * stride_k_d,
                mask=col_mask[:, None], other=0.0)
    v = tl.load(V_blk + _rows16(offs_nt, stride_v_t) + offs_d[None, :] * stride_v_d,
                mask=col_mask[:, None], other=0.0)
    Q_bh = _aligned16(Q_ptr, b * stride_q_b + h * stride_q_h)
    DO_bh = _aligned16(DO_ptr, b * stride_do_b + h * stride_do_h)
    LSE_bh = LSE_ptr + bh.to(tl.int64) * Tq
    DELTA_bh = DELTA_ptr + bh.to(tl.int64) * Tq

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    tq_pad = tl.cdiv(Tq, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # First query that sees key n0, and first query block that sees the whole key block.
        m_start = tl.maximum(n0 - shift, 0) // BLOCK_M * BLOCK_M
        first_full = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
    else:
        m_start = n0 * 0
        first_full = n0 * 0
    # A ragged key block is masked everywhere (it is only the last one).
    first_full = tl.where(n0 + BLOCK_N > Tk, tq_pad, first_full)
    m1 = tl.minimum(first_full, tq_pad)
    m2 = tl.maximum(m1, Tq // BLOCK_M * BLOCK_M)
    dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, DELTA_bh,
                                       stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                                       offs_n, m_start, m1, Tq, Tk, shift, qk_scale, seed, bh,
                                       dropout_p, keep_scale, BLOCK_M, HEAD_DIM, CAUSAL, True,
                                       DROPOUT, DOT_PRECISION)
    dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, DELTA_bh,
                                       stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                                       offs_n, m1, m2, Tq, Tk, shift, qk_scale, seed, bh,
                                       dropout_p, keep_scale, BLOCK_M, HEAD_DIM, CAUSAL, False,
                                       DROPOUT, DOT_PRECISION)
    dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, DELTA_bh,
                                       stride_q_t, stride_q_d, stride_do_t, stride_do_d,
                                       offs_n, m2, tq_pad, Tq, Tk, shift, qk_scale, seed, bh,
                                       dropout_p, keep_scale, BLOCK_M, HEAD_DIM, CAUSAL, True,
                                       DROPOUT, DOT_PRECISION)
    dk = dk * sm_scale
    DK_blk = _aligned16(DK_ptr, b * stride_dk_b + h * stride_dk_h + n0.to(tl.int64) * stride_dk_t)
    DV_blk = _aligned16(DV_ptr, b * stride_dv_b + h * stride_dv_h + n0.to(tl.int64) * stride_dv_t)
    tl.store(DK_blk + _rows16(offs_nt, stride_dk_t) + offs_d[None, :] * stride_dk_d,
             dk.to(DK_ptr.dtype.element_ty), mask=col_mask[:, None])
    tl.store(DV_blk + _rows16(offs_nt, stride_dv_t) + offs_d[None, :] * stride_dv_d,
             dv.to(DV_ptr.dtype.element_ty), mask=col_mask[:, None])


@triton.jit
def _attention_bwd_dq_inner(dq, q, do, lse2, delta, K_bh, V_bh, stride_k_t, stride_k_d,
                            stride_v_t, stride_v_d, offs_m, lo, hi, Tk, shift, qk_scale, seed, bh,
                            dropout_p, keep_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                            CAUSAL: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
                            DOT_PRECISION: tl.constexpr):
    """KV blocks [lo, hi) for one query block of the dq kernel."""
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kt_tile = offs_d[:, None] * stride_k_d + _cols16(offs_n0, stride_k_t)  # (hs, BLOCK_N)
    vt_tile = offs_d[:, None] * stride_v_d + _cols16(offs_n0, stride_v_t)  # (hs, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt_ptrs = _aligned16(K_bh, tl.cast(start_n, tl.int64) * stride_k_t) + kt_tile
        vt_ptrs = _aligned16(V_bh, tl.cast(start_n, tl.int64) * stride_v_t) + vt_tile
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < Tk, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < Tk, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(qk * qk_scale - lse2[:, None])
        if MASKED:
            valid = offs_n[None, :] < Tk
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if DROPOUT:
            keep = _attention_dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["seed"])
def _attention_bwd_dq_kernel(Q_ptr, K_ptr, V_ptr, DO_ptr, LSE_ptr, DELTA_ptr, DQ_ptr,
                             stride_q_b, stride_q_h, stride_q_t, stride_q_d,
                             stride_k_b, stride_k_h, stride_k_t, stride_k_d,
                             stride_v_b, stride_v_h, stride_v_t, stride_v_d,
                             stride_do_b, stride_do_h, stride_do_t, stride_do_d,
                             stride_dq_b, stride_dq_h, stride_dq_t, stride_dq_d,
                             H, Tq, Tk, qk_scale, sm_scale, seed, dropout_p, keep_scale,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                             CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                             DOT_PRECISION: tl.constexpr):
    """Attention backward, query side: dq for one block of queries.

    Grid: (cdiv(Tq, BLOCK_M), B * nh). Program (m, bh) owns query rows [m * BLOCK_M, +BLOCK_M)
    of head bh and loops over key blocks exactly like the forward (unmasked blocks, then the
    diagonal / ragged ones); with CAUSAL the heaviest query blocks are launched first.
    Pointers: Q, DO, DQ (B, nh, Tq, hs); K, V (B, nh, Tk, hs); any strides; LSE (natural log)
    and DELTA (B, nh, Tq) fp32 contiguous. DQ has q's dtype.
    On-chip: q, do tiles, lse and delta rows and the dq (BLOCK_M, hs) fp32 accumulator for the
    whole loop; per step one K and one V tile, the (BLOCK_M, BLOCK_N) tiles of P and dS.
    Cost per (b, h): 6 * Tq * Tk * hs FLOPs (3 dots; about half with CAUSAL); HBM reads q, dO
    once and K, V once per query block. Accumulation: fp32. No atomics.
    Constraints as for the forward.
    """
    tl.static_assert(HEAD_DIM == 16 or HEAD_DIM == 32 or HEAD_DIM == 64 or HEAD_DIM == 128)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
    bh, b, h, m0, offs_m, row_mask = _query_block(H, Tq, BLOCK_M, CAUSAL)
    shift = Tk - Tq
    q = _load_query_rows(Q_ptr, b, h, m0, row_mask, stride_q_b, stride_q_h, stride_q_t, stride_q_d,
                         BLOCK_M, HEAD_DIM)
    do = _load_query_rows(DO_ptr, b, h, m0, row_mask, stride_do_b, stride_do_h, stride_do_t, stride_do_d,
                          BLOCK_M, HEAD_DIM)
    lse = tl.load(LSE_ptr + bh.to(tl.int64) * Tq + offs_m, mask=row_mask, other=0.0)
    lse2 = lse * 1.4426950408889634
    delta = tl.load(DELTA_ptr + bh.to(tl.int64) * Tq + offs_m, mask=row_mask, other=0.0)
    K_bh = _aligned16(K_ptr, b * stride_k_b + h * stride_k_h)
    V_bh = _aligned16(V_ptr, b * stride_v_b + h * stride_v_h)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        n_full = (m0 + shift + 1) // BLOCK_N * BLOCK_N
        n_end = tl.minimum(Tk, m0 + BLOCK_M + shift)
    else:
        n_full = Tk // BLOCK_N * BLOCK_N
        n_end = Tk
    dq = _attention_bwd_dq_inner(dq, q, do, lse2, delta, K_bh, V_bh, stride_k_t, stride_k_d,
                                 stride_v_t, stride_v_d, offs_m, 0, n_full, Tk, shift, qk_scale,
                                 seed, bh, dropout_p, keep_scale, BLOCK_N, HEAD_DIM, CAUSAL, False,
                                 DROPOUT, DOT_PRECISION)
    dq = _attention_bwd_dq_inner(dq, q, do, lse2, delta, K_bh, V_bh, stride_k_t, stride_k_d,
                                 stride_v_t, stride_v_d, offs_m, n_full, n_end, Tk, shift, qk_scale,
                                 seed, bh, dropout_p, keep_scale, BLOCK_N, HEAD_DIM, CAUSAL, True,
                                 DROPOUT, DOT_PRECISION)
    dq = dq * sm_scale
    tl.store(_query_rows_ptrs(DQ_ptr, b, h, m0, stride_dq_b, stride_dq_h, stride_dq_t, stride_dq_d, BLOCK_M, HEAD_DIM),
             dq.to(DQ_ptr.dtype.element_ty), mask=row_mask[:, None])


@triton.jit(do_not_specialize=["seed"])
def _attention_dropout_mask_kernel(MASK_ptr, Tq, Tk, seed, dropout_p,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The attention dropout keep-mask, materialised (for tests and references only).

    Grid: (cdiv(Tq, BLOCK_M), cdiv(Tk, BLOCK_N), B * nh); one program writes one tile.
    MASK: (B, nh, Tq, Tk) bool contiguous. Calls the same ``_attention_dropout_keep`` as the
    forward and backward kernels, so it reproduces their mask bit for bit.
    """
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _attention_dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p)
    rows = bh.to(tl.int64) * Tq + offs_m[:, None]
    ptrs = MASK_ptr + rows * Tk + offs_n[None, :]
    tl.store(ptrs, keep, mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk))


# =============================================================================================
# Configs: one function per kernel lists the candidates for a target, best first; a prune
# filter drops those that overflow shared memory or whose tiles exceed the padded sequence
# lengths. The launchers take the survivor that this device's tuning table names for the
# call (kernels/tuned/, measured by scripts/tune.py), else the first survivor, so the choice is
# a pure function of the table and (arch, hs, dtype, dropout, causal, Tq, Tk) and gradients are
# bit-reproducible from run to run: autotuning by timing at run time would let block sizes,
# hence summation order, vary between processes.
# Every candidate is compiled for sm_80 and sm_90 by tests/test_aot_attention.py, which fails
# on register spills and on shared memory over the limit. Dropout's Philox rounds cost about
# 30-70 registers per thread, which is why some lists differ with DROPOUT.
# =============================================================================================



def _cfg(block_m, block_n, num_warps, num_stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps,
                         num_stages=num_stages)


def _fwd_configs(arch, head_dim, dropout):
    """Forward candidates for ``arch`` (80: Ampere, 90: Hopper), best first.

    The last two are small tiles for short sequences (decode, Tq = 1).
    """
    if head_dim <= 64:
        if arch >= 90:
            big = ([_cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3)] if dropout else
                   [_cfg(128, 64, 4, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 8, 3),
                    _cfg(64, 64, 4, 4)])
        else:
            big = ([_cfg(128, 64, 8, 3), _cfg(64, 64, 8, 3)] if dropout else
                   [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3)])
    elif arch >= 90:
        big = [_cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3)]
    else:
        big = [_cfg(128, 32, 8, 3)] if dropout else [_cfg(128, 64, 8, 2), _cfg(128, 32, 8, 3)]
    return big + [_cfg(16, 64, 4, 2), _cfg(16, 32, 4, 2)]


def _bwd_dkdv_configs(arch, head_dim, dropout):
    """dk/dv kernel candidates (BLOCK_N keys owned, BLOCK_M queries per step), best first."""
    if head_dim <= 64:
        big = ([_cfg(32, 128, 8, 3), _cfg(32, 64, 4, 3)] if arch >= 90 else
               [_cfg(32, 128, 8, 2), _cfg(16, 64, 4, 3)])
    else:
        big = [_cfg(16, 128, 8, 2), _cfg(32, 64, 8, 2)]
    return big + [_cfg(32, 32, 4, 2)]


def _bwd_dq_configs(arch, head_dim, dropout):
    """dq kernel candidates (BLOCK_M queries owned, BLOCK_N keys per step), best first."""
    if head_dim <= 64:
        big = ([_cfg(128, 32, 4, 3), _cfg(128, 64, 8, 3), _cfg(64, 32, 4, 3)] if arch >= 90 else
               [_cfg(128, 32, 8, 3), _cfg(64, 32, 4, 3)])
    else:
        big = ([_cfg(128, 32, 8, 2), _cfg(64, 32, 4, 2)] if arch >= 90 else
               [_cfg(64, 64, 8, 2), _cfg(64, 32, 4, 2)])
    return big + [_cfg(16, 32, 4, 2)]


_CONFIG_LISTS = {"fwd": _fwd_configs, "dkdv": _bwd_dkdv_configs, "dq": _bwd_dq_configs}

# fp32 runs IEEE dots on CUDA cores, a correctness path rather than a fast one: the smallest
# tile that compiles without spills for every kernel, arch and head dim.
_FP32_CONFIG = _cfg(16, 32, 8, 2)

# CPU (interpreter) configs: one fixed, small choice; BLOCK_M != BLOCK_N so the tests exercise
# the unequal-tile diagonal logic. Timing-based choice is meaningless in the interpreter.
_INTERPRETER_CONFIGS = {
    "fwd": _cfg(32, 16, 1, 1),
    "dkdv": _cfg(16, 32, 1, 1),
    "dq": _cfg(32, 16, 1, 1),
}


def _shared_bytes(kind, cfg, head_dim, elt):
    """Upper estimate of a config's shared memory: pipelined tiles plus staging buffers."""
    bm, bn, s = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_stages
    if kind == "fwd":  # K and V tiles per stage, q, and P staged for the second dot
        return elt * (s * 2 * bn * head_dim + bm * head_dim + bm * bn)
    if kind == "dkdv":  # q and do tiles per stage, k and v, P^T and dS^T staged
        return elt * (s * 2 * bm * head_dim + 2 * bn * head_dim + 2 * bm * bn)
    # dq: K and V tiles per stage, q and do, dS staged
    return elt * (s * 2 * bn * head_dim + 2 * bm * head_dim + bm * bn)


def _prune_configs(kind, configs, head_dim, Tq, Tk, elt, shared_limit):
    """Keep the configs of ``kind`` ("fwd", "dkdv", "dq") that fit ``shared_limit`` bytes and
    whose tiles do not exceed the sequence lengths rounded up to a power of two (>= 16).
    Keeps at least the smallest config."""
    fits = [c for c in configs if _shared_bytes(kind, c, head_dim, elt) <= shared_limit]
    tq = max(16, triton.next_power_of_2(Tq))
    tk = max(16, triton.next_power_of_2(Tk))
    kept = [c for c in fits if c.kwargs["BLOCK_M"] <= tq and c.kwargs["BLOCK_N"] <= tk]
    return kept or fits[-1:]


def device_target(device):
    """(arch, shared-memory bytes per block) of a CUDA device: arch 90 for Hopper and later,
    else 80; what the candidate lists and the prune filter are chosen by."""
    major, minor = torch.cuda.get_device_capability(device)
    arch = 90 if major >= 9 else 80
    try:
        props = triton.runtime.driver.active.utils.get_device_properties(device.index)
        limit = props["max_shared_mem"]
    except Exception:  # older driver utils: fall back to the table
        limit = SHARED_MEMORY_PER_BLOCK.get(major * 10 + minor, SHARED_MEMORY_PER_BLOCK[arch])
    return arch, limit


def _cuda_device(device):
    return torch.device("cuda", torch.cuda.current_device()) if device.index is None else device


def config_candidates(kind, arch, shared_limit, head_dim, dtype, dropout, Tq, Tk):
    """The ordered candidate configs of kernel ``kind`` for a call on a device of ``arch`` with
    ``shared_limit`` bytes of shared memory per block (``device_target``): the launchers take
    the tuned one among them (``fastgpt.kernels.tuning``), else the first; ``scripts/tune.py``
    times them all."""
    if dtype == torch.float32:
        return [_FP32_CONFIG]
    elt = torch.finfo(dtype).bits // 8
    return _prune_configs(kind, _CONFIG_LISTS[kind](arch, head_dim, dropout), head_dim, Tq, Tk, elt, shared_limit)


def config_fields(cfg):
    """A config as the tuning table records it."""
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def tuning_key(head_dim, dtype, dropout, causal, Tq, Tk):
    """The tuning-table key of a call; sequence lengths share an entry per power of two, as
    they share the pruned candidate list."""
    return {"head_dim": head_dim, "dtype": dtype, "dropout": bool(dropout), "causal": bool(causal),
            "Tq": tuning.bucket(Tq), "Tk": tuning.bucket(Tk)}


def _pick_config(kind, device, head_dim, dtype, dropout, Tq, Tk, causal=True):
    if device.type != "cuda":
        return _INTERPRETER_CONFIGS[kind]
    if dtype == torch.float32:
        return _FP32_CONFIG
    return _tuned_config(kind, _cuda_device(device).index, head_dim, dtype, bool(dropout), bool(causal),
                         tuning.bucket(Tq), tuning.bucket(Tk))


@tuning.cached
def _tuned_config(kind, index, head_dim, dtype, dropout, causal, Tq, Tk):
    # Tq, Tk as powers of two: the prune filter and the table key see no more of them.
    device = torch.device("cuda", index)
    candidates = config_candidates(kind, *device_target(device), head_dim, dtype, dropout, Tq, Tk)
    return tuning.pick(f"attention.{kind}", device, tuning_key(head_dim, dtype, dropout, causal, Tq, Tk),
                       candidates, config_fields)


# =============================================================================================
# Host launchers
# =============================================================================================


def _interpreted():
    # True when the kernels were built by the interpreter (TRITON_INTERPRET=1 before import).
    return not isinstance(_attention_fwd_kernel, triton.runtime.jit.JITFunction)


def _dot_precision(dtype):
    # input_precision only affects fp32 operands; 16-bit dots always run on tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def _strides(t):
    # A size-1 dimension is never indexed past 0: report stride 0 so the alignment contract
    # does not depend on whatever stride a view left there.
    return tuple(0 if t.shape[i] == 1 else t.stride(i) for i in range(4))


def _follows_contract(t):
    """16-byte-aligned data and batch/head/time strides that are multiples of 16 elements."""
    return (t.stride(3) == 1 or t.shape[3] == 1) and t.data_ptr() % 16 == 0 \
        and all(s % 16 == 0 for s in _strides(t)[:3])


def _to_contract(t):
    # The kernels assume the alignment contract (see _aligned16). Natural layouts, including
    # q/k/v views of one (B, T, 3, nh, hs) projection, already follow it and are used in place;
    # anything else (a strided head dim, odd strides, a misaligned offset) is copied once.
    if _follows_contract(t):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _check_device(t, name):
    if t.device.type == "cuda" and not _interpreted():
        return
    if t.device.type == "cpu" and _interpreted():
        return
    raise ValueError(f"{name} is on {t.device}; the Triton attention kernels need CUDA tensors, "
                     f"or CPU tensors when TRITON_INTERPRET=1 was set before triton was imported")


def _check_inputs(q, k, v, scale, dropout_p, seed):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be 4-D (B, nh, T, hs), got shape {tuple(t.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; supported: float16, bfloat16, float32")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; they must match")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    _check_device(q, "q")
    if _interpreted() and q.dtype not in INTERPRETER_DOT_DTYPES:  # its bf16 dots return garbage
        raise ValueError(f"q has dtype {q.dtype}: the Triton interpreter computes its dots wrongly "
                         f"(triton-lang/triton#11584); use float32 or float16 there, or a GPU")
    B, H, Tq, D = q.shape
    if k.shape[0] != B or k.shape[1] != H or v.shape[0] != B or v.shape[1] != H:
        raise ValueError(f"batch/head mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}; expected the same (B, nh)")
    if k.shape[3] != D or v.shape[3] != D:
        raise ValueError(f"head-dim mismatch: q has hs={D}, k has {k.shape[3]}, v has "
                         f"{v.shape[3]}; expected all equal")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k has Tk={k.shape[2]} but v has {v.shape[2]}; expected equal")
    Tk = k.shape[2]
    if Tq > Tk:
        raise ValueError(f"q has Tq={Tq} > Tk={Tk} of k; expected Tq <= Tk")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q has head dim {D}; supported head dims: {SUPPORTED_HEAD_DIMS}")
    if B * H > ATTENTION_MAX_BATCH_HEADS:
        raise ValueError(f"q has B * nh = {B * H} > {ATTENTION_MAX_BATCH_HEADS} (the grid's second axis)")
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale)
                                       and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    _check_dropout(dropout_p, seed)


def _check_dropout(dropout_p, seed):
    if isinstance(dropout_p, bool) or not (isinstance(dropout_p, (int, float))
                                           and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")


def _seed64(seed):
    # The Philox key is 64 bits; fold any Python int into [0, 2**63) so Triton passes it as i64.
    return seed % (1 << 63)


def attention_fwd(q, k, v, causal: bool, scale: float, dropout_p: float = 0.0, seed: int = 0):
    """Fused attention forward. Returns ``(o, lse)``.

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs), Tq <= Tk; same dtype (fp16, bf16 or fp32) and
    device; hs in {16, 32, 64, 128}. Any strided views are read in place when their data is
    16-byte aligned and their batch/head/time strides are multiples of 16 elements with a unit
    head-dim stride (true of every natural layout, e.g. the q/k/v views of one
    (B, T, 3, nh, hs) projection); other inputs are copied first. ``causal`` masks bottom-right
    aligned: query i sees keys j <= i + Tk - Tq. ``scale`` multiplies q k^T (usually
    hs ** -0.5). With ``dropout_p`` > 0 the probabilities are dropped with the Philox mask of
    ``seed`` (see ``dropout_mask``) and the kept ones scaled by 1 / (1 - dropout_p). fp32
    inputs use IEEE fp32 dots (``input_precision="ieee"``, no TF32).

    o: (B, nh, Tq, hs) contiguous, q's dtype. lse: (B, nh, Tq) fp32, the natural-log
    logsumexp of each masked row of ``scale * q @ k^T`` (dropout does not enter it).
    """
    _check_inputs(q, k, v, scale, dropout_p, seed)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    o = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    q, k, v = _to_contract(q), _to_contract(k), _to_contract(v)
    cfg = _pick_config("fwd", q.device, D, q.dtype, dropout_p > 0, Tq, Tk, causal)
    with on_device(q):
        _launch_fwd(q, k, v, o, lse, causal, scale, dropout_p, seed, cfg)
    return o, lse


def _launch_fwd(q, k, v, o, lse, causal, scale, dropout_p, seed, cfg):
    """Launch the forward with an explicit config; returns what Triton's launch returns (the
    compiled kernel, whose n_spills the sweep reads)."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    grid = (triton.cdiv(Tq, bm), B * H)
    return _attention_fwd_kernel[grid](
        q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, Tq, Tk, scale * LOG2E, _seed64(seed), float(dropout_p), 1.0 / (1.0 - dropout_p),
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal), DROPOUT=dropout_p > 0,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def attention_bwd(do, q, k, v, o, lse, causal: bool, scale: float, dropout_p: float = 0.0,
                  seed: int = 0):
    """Fused attention backward. Returns ``(dq, dk, dv)``: contiguous, in q's dtype.

    ``o`` and ``lse`` are what ``attention_fwd`` returned for the same (q, k, v, causal, scale,
    dropout_p, seed); ``do`` is the gradient of o, (B, nh, Tq, hs), any strides (copied to
    q's dtype and layout contract if needed, like the inputs). Deterministic: no atomics, so
    repeated calls give bit-identical gradients. fp32 inputs use IEEE fp32 dots.
    """
    _check_inputs(q, k, v, scale, dropout_p, seed)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    for name, t in (("do", do), ("o", o)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (B, H, Tq, D):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have q's shape {(B, H, Tq, D)}, got {got}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != (B, H, Tq) \
            or lse.dtype != torch.float32:
        got = (tuple(lse.shape), lse.dtype) if isinstance(lse, torch.Tensor) else type(lse).__name__
        raise ValueError(f"lse must be fp32 of shape {(B, H, Tq)} (from attention_fwd), got {got}")
    if lse.device != q.device:
        raise ValueError(f"lse is on {lse.device} but q is on {q.device}")

    dq = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    if dq.numel() == 0:  # no queries: no gradient reaches k or v
        return (dq, torch.zeros((B, H, Tk, D), dtype=q.dtype, device=q.device),
                torch.zeros((B, H, Tk, D), dtype=q.dtype, device=q.device))
    dk = torch.empty((B, H, Tk, D), dtype=q.dtype, device=q.device)
    dv = torch.empty((B, H, Tk, D), dtype=q.dtype, device=q.device)
    q, k, v = _to_contract(q), _to_contract(k), _to_contract(v)
    do = _to_contract(do.to(q.dtype))
    o = _to_contract(o)
    lse = lse.contiguous()
    delta = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    cfg_dkdv = _pick_config("dkdv", q.device, D, q.dtype, dropout_p > 0, Tq, Tk, causal)
    cfg_dq = _pick_config("dq", q.device, D, q.dtype, dropout_p > 0, Tq, Tk, causal)
    with on_device(q):
        _launch_bwd(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale, dropout_p, seed,
                    cfg_dkdv, cfg_dq)
    return dq, dk, dv


def _launch_bwd(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale, dropout_p, seed,
                cfg_dkdv, cfg_dq):
    """Launch the three backward kernels with explicit configs."""
    _launch_bwd_preprocess(o, do, delta)
    _launch_bwd_dkdv(q, k, v, do, lse, delta, dk, dv, causal, scale, dropout_p, seed, cfg_dkdv)
    _launch_bwd_dq(q, k, v, do, lse, delta, dq, causal, scale, dropout_p, seed, cfg_dq)


def _launch_bwd_preprocess(o, do, delta):
    B, H, Tq, D = o.shape
    pre_bm = 64 if o.device.type == "cuda" else 32
    _attention_bwd_preprocess_kernel[(triton.cdiv(Tq, pre_bm), B * H)](
        o, do, delta, *_strides(o), *_strides(do), H, Tq, BLOCK_M=pre_bm, HEAD_DIM=D)


def _bwd_args(q, k, causal, scale, dropout_p, seed):
    """The scalar arguments and constexprs shared by the dk/dv and dq kernels."""
    B, H, Tq, D = q.shape
    scalars = (H, Tq, k.shape[2], scale * LOG2E, scale, _seed64(seed), float(dropout_p),
               1.0 / (1.0 - dropout_p))
    common = dict(HEAD_DIM=D, CAUSAL=bool(causal), DROPOUT=dropout_p > 0,
                  DOT_PRECISION=_dot_precision(q.dtype))
    return scalars, common


def _launch_bwd_dkdv(q, k, v, do, lse, delta, dk, dv, causal, scale, dropout_p, seed, cfg):
    scalars, common = _bwd_args(q, k, causal, scale, dropout_p, seed)
    B, H, Tk = k.shape[0], k.shape[1], k.shape[2]
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    return _attention_bwd_dkdv_kernel[(triton.cdiv(Tk, bn), B * H)](
        q, k, v, do, lse, delta, dk, dv, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dk), *_strides(dv), *scalars, BLOCK_M=bm, BLOCK_N=bn, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _launch_bwd_dq(q, k, v, do, lse, delta, dq, causal, scale, dropout_p, seed, cfg):
    scalars, common = _bwd_args(q, k, causal, scale, dropout_p, seed)
    B, H, Tq = q.shape[0], q.shape[1], q.shape[2]
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    return _attention_bwd_dq_kernel[(triton.cdiv(Tq, bm), B * H)](
        q, k, v, do, lse, delta, dq, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dq), *scalars, BLOCK_M=bm, BLOCK_N=bn, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# Tuning interface (scripts/tune.py): TUNABLE names the kernels a sweep times;
# device_target, config_candidates, config_fields and tuning_key (above) give their candidates
# and table key;
# launch_with_config runs one of them with an explicit config on tensors that follow the
# launchers' contract (contiguous q, k, v, do; o and lse from the forward; delta = the fp32
# rowsum of o * do, (B, nh, Tq) contiguous; outputs allocated by the caller).
TUNABLE = ("fwd", "dkdv", "dq")


def launch_with_config(kind, cfg, *, q, k, v, causal, scale, dropout_p=0.0, seed=0, o=None, lse=None,
                       do=None, delta=None, dq=None, dk=None, dv=None):
    """Launch kernel ``kind`` of TUNABLE with ``cfg``; it writes (o, lse), (dk, dv) or dq.
    Returns Triton's compiled kernel (None under the interpreter)."""
    with on_device(q):
        if kind == "fwd":
            return _launch_fwd(q, k, v, o, lse, causal, scale, dropout_p, seed, cfg)
        if kind == "dkdv":
            return _launch_bwd_dkdv(q, k, v, do, lse, delta, dk, dv, causal, scale, dropout_p, seed, cfg)
        if kind == "dq":
            return _launch_bwd_dq(q, k, v, do, lse, delta, dq, causal, scale, dropout_p, seed, cfg)
        raise ValueError(f"kind must be one of {TUNABLE}, got {kind!r}")


def dropout_mask(B, H, Tq, Tk, dropout_p, seed, device):
    """The keep-mask (B, nh, Tq, Tk) bool that the kernels apply for ``(dropout_p, seed)``.

    True means kept. Generated by a Triton kernel through the same Philox helper as the
    forward and backward, so references built with it match the kernels exactly.
    """
    _check_dropout(dropout_p, seed)
    device = torch.device(device)
    mask = torch.empty((B, H, Tq, Tk), dtype=torch.bool, device=device)
    _check_device(mask, "device")
    if mask.numel() == 0:
        return mask
    bm, bn = 32, 32
    grid = (triton.cdiv(Tq, bm), triton.cdiv(Tk, bn), B * H)
    with on_device(mask):
        _attention_dropout_mask_kernel[grid](mask, Tq, Tk, _seed64(seed), float(dropout_p),
                                             BLOCK_M=bm, BLOCK_N=bn)
    return mask
