"""Fused causal flash-attention (forward and backward) with in-kernel dropout.

Host launchers:

    attention_fwd(q, k, v, causal, scale, dropout_p=0.0, seed=0) -> (o, lse)
    attention_bwd(do, q, k, v, o, lse, causal, scale, dropout_p=0.0, seed=0) -> (dq, dk, dv)
    dropout_mask(B, H, Tq, Tk, dropout_p, seed, device) -> bool (B, H, Tq, Tk)

Shapes (nanoGPT names): q is (B, nh, Tq, hs), k and v are (B, nh, Tk, hs) with Tq <= Tk.
Inputs may be strided views (e.g. the q, k, v views of one (B, T, 3, nh, hs) projection
output): the kernels take the batch, head and time strides of every tensor and read views in
place. The one requirement (the alignment contract, see ``_follows_contract``) is 16-byte-aligned
data, a unit head-dim stride and batch/head/time strides that are multiples of 16 elements,
which every natural layout meets; an input that does not is copied once. That contract is also
what the Hopper path needs: on sm_90 fp16/bf16 tiles move by TMA through 4-D tensor descriptors
(B, nh, T, hs) built on the host (``triton.tools.tensor_descriptor``); elsewhere (sm_80, fp32,
the interpreter by default) through pointers with 16-byte vector loads. Both paths run the same
kernels with the same loop structure; a constexpr ``TMA`` picks how a tile is loaded or stored.

Causal masking is aligned bottom-right: query i sees key j iff j <= i + (Tk - Tq), so with a
KV cache (Tq < Tk) the last query sees every key; with Tq == Tk this is the usual
lower-triangular mask.

``lse`` is the natural-log logsumexp of each row of ``scale * q @ k^T`` (masked), fp32, shape
(B, nh, Tq). Internally the kernels work in base 2 (exp2 with log2(e) folded into the scale)
and convert at the boundary.

Dropout RNG: Philox-4x32-10 (``tl.philox``) keyed by the caller's 64-bit seed, with the
128-bit counter (j // 4, i, b * nh + h, 0) -- three 32-bit words, so no flattened index can
overflow whatever B, nh, Tq, Tk are. One call yields four words; key j uses word j % 4. The keep
decision for element (b, h, i, j) is therefore a pure function of (seed, b, h, i, j) and of
nothing about tiling or launch order: the backward regenerates exactly the forward's mask, and
``dropout_mask`` returns it for tests. Keep iff u >= p with u the top 24 bits of the word over
2**24; kept probabilities are scaled by 1 / (1 - p).

Precision: fp16 and bf16 inputs use tensor-core dots with fp32 accumulation; fp32 inputs use
IEEE fp32 dots (``input_precision="ieee"``, no TF32). Softmax statistics, the row sums
``delta`` and every accumulator are fp32.

Determinism: the backward uses no atomics. One kernel launch computes, per program, dk and dv
for one block of keys (looping over query blocks) and dq for one block of queries (looping over
key blocks). Each output element is summed by one program in a fixed order, so repeated calls
give bit-identical gradients (for a fixed config, which the launchers choose deterministically
from arch, head dim, dtype, dropout, causality, the sequence lengths and the device's tuning
table).
"""
import math

import torch
import triton
import triton.language as tl

from fastgpt.kernels import tuning
from fastgpt.kernels._launch import on_device
from fastgpt.kernels.limits import ATTENTION_HEAD_DIMS as SUPPORTED_HEAD_DIMS
from fastgpt.kernels.limits import ATTENTION_MAX_BATCH, ATTENTION_MAX_HEADS, INTERPRETER_DOT_DTYPES, SHARED_MEMORY_PER_BLOCK
from fastgpt.kernels.limits import DTYPES as SUPPORTED_DTYPES

try:  # host-side TMA descriptors (triton >= 3.4); without them every target uses pointers
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - the pinned tritons (3.6, 3.8) have it
    TensorDescriptor = None

LOG2E = 1.4426950408889634
# Initial running max: finite, so that a KV block fully masked for some row (possible when the
# diagonal stretch runs first) gives exp2(-inf - m) = 0 and alpha = 1 instead of NaN.
_M_INIT = tl.constexpr(-3.4028234663852886e38)
_INF = tl.constexpr(float("inf"))

# =============================================================================================
# Forward: online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022).
#
# For one block of query rows, stream over key/value blocks keeping per row
#     m   = running max of the (base-2) logits  s2 = (q . k) * scale * log2(e)
#     l   = running sum of exp2(s2 - m)
#     acc = running sum of exp2(s2 - m) * keep / (1 - p) * v
# On a new block with logits S2 (BLOCK_M, BLOCK_N):
#     m_new = max(m, rowmax(S2));  alpha = exp2(m - m_new);  P = exp2(S2 - m_new)
#     l = alpha * l + rowsum(P);   acc = alpha * acc + (P * keep) @ V;  m = m_new
# At the end o = acc / ((1 - p) * l) and lse2 = m + log2(l) (stored as lse = lse2 * ln 2).
# Dropout acts on the normalised probabilities, so l sums the undropped P. The recurrence does
# not depend on the order of the blocks, which is why the masked stretch can run first.
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
# inside that prefix run without any mask ("full" blocks); the few blocks after them, up to
# min(Tk, m0 + BLOCK_M + shift), straddle the diagonal and run masked; later blocks are never
# visited. Every kernel runs its masked stretch *first* and the full stretch second: with two
# run-time trip counts in the other order, the skip path of the first loop writes the
# accumulators between a wgmma and its wait, and ptxas serialises every wgmma (its advisory
# C7515). The dk/dv stretch gets a compile-time trip count for the same reason.
#
# Out-of-range rows read as 0 (TMA zero-fills them; the pointer path masks its loads), and the
# kernels lean on that instead of masking: a key row >= Tk has k = v = 0, so it adds nothing to
# dq; a query row >= Tq gets lse = +inf, so P = 0 and it adds nothing to dk or dv; dk/dv rows
# >= Tk and dq rows >= Tq are computed but never stored. Only the forward must mask keys >= Tk
# (a zero key still has P > 0), which the causal mask already does for every real row.
# =============================================================================================


# Alignment contract (pointer path). The launchers pass only tensors whose data pointer is
# 16-byte aligned and whose batch, head and time strides are multiples of 16 elements (anything
# else is copied first). The tile helpers state that to the compiler (tl.multiple_of on the
# derived base pointer and row offsets), so tile loads are 16-byte vectors and cp.async-pipelined,
# whatever Triton's own argument specialisation saw; hints on the raw arguments would be
# dropped. The pointer arithmetic is written out in both helpers rather than in a shared one:
# under the interpreter every nested @triton.jit call costs milliseconds.
@triton.jit
def _load_rows(X_ptr, b, h, t0, T, stride_b, stride_h, stride_t,
               BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """The (BLOCK, HEAD_DIM) tile of rows [t0, t0 + BLOCK) of head (b, h); rows >= T read as 0.

    X_ptr: with TMA a 4-D tensor descriptor (B, nh, T, hs) with block [1, 1, BLOCK, HEAD_DIM]
    (out-of-range rows are zero-filled by the copy engine); else a pointer (masked load,
    int64 offsets). Every kernel's tile arguments (``*_ptr`` but LSE and DELTA) are the one or
    the other, as TMA says.
    """
    if TMA:
        return X_ptr.load([b, h, t0, 0]).reshape(BLOCK, HEAD_DIM)
    else:
        rows = tl.arange(0, BLOCK)
        base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + tl.cast(t0, tl.int64) * stride_t
        ptrs = tl.multiple_of(X_ptr + base, 16) + tl.multiple_of(rows[:, None] * stride_t, [16, 16]) \
            + tl.arange(0, HEAD_DIM)[None, :]
        return tl.load(ptrs, mask=(t0 + rows < T)[:, None], other=0.0)


@triton.jit
def _store_rows(X_ptr, value, b, h, t0, T, stride_b, stride_h, stride_t,
                BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """Store ``value`` (BLOCK, HEAD_DIM) into rows [t0, t0 + BLOCK) of head (b, h), rows < T only."""
    if TMA:
        X_ptr.store([b, h, t0, 0], value.to(X_ptr.dtype).reshape(1, 1, BLOCK, HEAD_DIM))
    else:
        rows = tl.arange(0, BLOCK)
        base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + tl.cast(t0, tl.int64) * stride_t
        ptrs = tl.multiple_of(X_ptr + base, 16) + tl.multiple_of(rows[:, None] * stride_t, [16, 16]) \
            + tl.arange(0, HEAD_DIM)[None, :]
        tl.store(ptrs, value.to(X_ptr.dtype.element_ty), mask=(t0 + rows < T)[:, None])


@triton.jit
def _attention_dropout_keep(seed, bh, rows, col0, dropout_p, BLOCK_N: tl.constexpr):
    """Keep mask (BLOCK_M, BLOCK_N) of query rows ``rows`` (BLOCK_M,) and keys
    [col0, col0 + BLOCK_N): True where element (bh, row, col) survives dropout.

    One Philox-4x32-10 call (key = seed, counter = (col // 4, row, bh, 0)) serves four keys:
    key col takes output word col % 4, and is kept iff u >= dropout_p for u = (its top 24 bits)
    / 2**24, tested exactly as top 24 bits >= ceil(dropout_p * 2**24) (dropout_p in fp32).
    col0 must be a multiple of 4 (every caller's tiles start at multiples of BLOCK_N >= 16).
    """
    groups = col0 // 4 + tl.arange(0, BLOCK_N // 4)
    zero = rows[:, None] * 0 + groups[None, :] * 0
    r0, r1, r2, r3 = tl.philox(seed, groups[None, :] + zero, rows[:, None] + zero, zero + bh, zero)
    # join(join(r0, r2), join(r1, r3))[m, g, a, b] is word 2a + b: row-major, key 4g + w <- word w
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (rows.shape[0], BLOCK_N))
    threshold = tl.math.ceil(dropout_p * 16777216.0).to(tl.int32)
    return (r >> 8).to(tl.int32) >= threshold


@triton.jit
def _attention_fwd_inner(acc, l_i, m_i, q, K_ptr, V_ptr, b, h, stride_k_b, stride_k_h, stride_k_t,
                         stride_v_b, stride_v_h, stride_v_t, offs_m, lo, hi, Tk, shift, pad, qk_scale,
                         seed, bh, dropout_p, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                         CAUSAL: tl.constexpr, MASKED: tl.constexpr, KEY_PAD: tl.constexpr,
                         DROPOUT: tl.constexpr, TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """KV blocks [lo, hi) for one query block (see the comment block above); with KEY_PAD keys
    j < pad are masked in every block."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K_ptr, b, h, start_n, Tk, stride_k_b, stride_k_h, stride_k_t, BLOCK_N, HEAD_DIM, TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if KEY_PAD:
            qk = tl.where(offs_n[None, :] >= pad, qk, float("-inf"))
        if MASKED:
            if CAUSAL:  # j <= i + shift < Tk for every real row: keys >= Tk are masked too
                valid = offs_n[None, :] <= offs_m[:, None] + shift
            else:
                valid = offs_n[None, :] < Tk
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
            keep = _attention_dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
            p = tl.where(keep, p, 0.0)
        v = _load_rows(V_ptr, b, h, start_n, Tk, stride_v_b, stride_v_h, stride_v_t, BLOCK_N, HEAD_DIM, TMA)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["seed"])
def _attention_fwd_kernel(Q_ptr, K_ptr, V_ptr, O_ptr, LSE_ptr, PAD_ptr,
                          stride_q_b, stride_q_h, stride_q_t,
                          stride_k_b, stride_k_h, stride_k_t,
                          stride_v_b, stride_v_h, stride_v_t,
                          stride_o_b, stride_o_h, stride_o_t,
                          H, Tq, Tk, qk_scale, seed, dropout_p, keep_scale,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                          CAUSAL: tl.constexpr, KEY_PAD: tl.constexpr, DROPOUT: tl.constexpr,
                          TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Attention forward: o = dropout(softmax(scale * q k^T + mask)) v and its logsumexp.

    Grid: (cdiv(Tq, BLOCK_M), nh, B). Program (m, h, b) computes rows [m * BLOCK_M, +BLOCK_M)
    of o and lse for head (b, h); with CAUSAL the heaviest query blocks are launched first.
    Tiles: BLOCK_M query rows x BLOCK_N keys per step; HEAD_DIM = hs. The masked (diagonal or
    ragged-end) stretch of KV blocks runs first, then the unmasked prefix.
    Q_ptr, K_ptr, V_ptr, O_ptr: (B, nh, T, hs) of one dtype (fp16/bf16/fp32), unit head-dim
    stride; with TMA 4-D tensor descriptors (blocks [1, 1, BLOCK_M or BLOCK_N, hs]), else
    pointers with the batch/head/time strides given. LSE: (B, nh, Tq) fp32 contiguous, natural log.
    With KEY_PAD, PAD: (B,) int32, keys j < PAD[b] of batch row b are masked too (left-padded
    batches); the unmasked stretch starts at the first block holding a key >= PAD[b], and a row
    that sees no key gets o = 0 and lse = -inf. Without it PAD is unused.
    On-chip: the q tile, acc (BLOCK_M, hs) fp32, m and l (BLOCK_M,) fp32; one K and one V tile
    per step. The (Tq, Tk) score matrix never leaves registers.
    Cost per (b, h): 4 * Tq * Tk * hs FLOPs (about half with CAUSAL); HBM reads q once and
    K, V once per query block: (Tq + 2 * Tk * cdiv(Tq, BLOCK_M)) * hs * elt bytes, writes
    Tq * (hs * elt + 4) bytes.
    Accumulation: fp32 (dots with fp32 accumulators; IEEE dots for fp32 inputs).
    Constraints: HEAD_DIM in {16, 32, 64, 128}; BLOCK_M, BLOCK_N powers of two >= 16; the
    alignment contract; Tq <= Tk (host checks).
    """
    tl.static_assert(HEAD_DIM == 16 or HEAD_DIM == 32 or HEAD_DIM == 64 or HEAD_DIM == 128)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    bh = b * H + h
    m0 = start_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    shift = Tk - Tq
    q = _load_rows(Q_ptr, b, h, m0, Tq, stride_q_b, stride_q_h, stride_q_t, BLOCK_M, HEAD_DIM, TMA)
    if KEY_PAD:
        pad = tl.load(PAD_ptr + b)
        n_lo = tl.maximum(pad, 0) // BLOCK_N * BLOCK_N
    else:
        pad = 0
        n_lo = 0

    m_i = tl.full([BLOCK_M], _M_INIT, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        n_full = (m0 + shift + 1) // BLOCK_N * BLOCK_N
        n_end = tl.minimum(Tk, m0 + BLOCK_M + shift)
    else:
        n_full = Tk // BLOCK_N * BLOCK_N
        n_end = Tk
    # Diagonal blocks (or the ragged end of Tk) first, then the blocks every row sees whole.
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K_ptr, V_ptr, b, h, stride_k_b, stride_k_h,
                                         stride_k_t, stride_v_b, stride_v_h, stride_v_t, offs_m,
                                         n_full, n_end, Tk, shift, pad, qk_scale, seed, bh,
                                         dropout_p, BLOCK_N, HEAD_DIM, CAUSAL, True, KEY_PAD, DROPOUT,
                                         TMA, DOT_PRECISION)
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, K_ptr, V_ptr, b, h, stride_k_b, stride_k_h,
                                         stride_k_t, stride_v_b, stride_v_h, stride_v_t, offs_m,
                                         n_lo, n_full, Tk, shift, pad, qk_scale, seed, bh,
                                         dropout_p, BLOCK_N, HEAD_DIM, CAUSAL, False, KEY_PAD, DROPOUT,
                                         TMA, DOT_PRECISION)

    # Without KEY_PAD every real row sees key 0, so l_i > 0 there; with it a row may see no key:
    # l_i = 0, lse2 = -inf, and o = 0.
    lse2 = m_i + tl.log2(l_i)
    if KEY_PAD:
        l_i = tl.where(l_i > 0, l_i, 1.0)
    if DROPOUT:
        acc = acc * (keep_scale / l_i)[:, None]
    else:
        acc = acc / l_i[:, None]
    _store_rows(O_ptr, acc, b, h, m0, Tq, stride_o_b, stride_o_h, stride_o_t, BLOCK_M, HEAD_DIM, TMA)
    tl.store(LSE_ptr + bh.to(tl.int64) * Tq + offs_m, lse2 * 0.6931471805599453, mask=offs_m < Tq)


@triton.jit
def _attention_bwd_preprocess_kernel(O_ptr, DO_ptr, DELTA_ptr,
                                     stride_o_b, stride_o_h, stride_o_t,
                                     stride_do_b, stride_do_h, stride_do_t,
                                     H, Tq, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """delta = rowsum(o * do) in fp32.

    Grid: (cdiv(Tq, BLOCK_M), nh, B); one program reduces BLOCK_M rows of one head.
    Pointers: O and DO (B, nh, Tq, hs), unit head-dim stride, fp16/bf16/fp32; DELTA (B, nh, Tq)
    fp32 contiguous. HBM: 2 * hs * elt bytes read and 4 bytes written per row.
    Accumulation: fp32. No dots: a streaming pass of 16-byte loads.
    """
    h = tl.program_id(1)
    b = tl.program_id(2)
    m0 = tl.program_id(0) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    o = _load_rows(O_ptr, b, h, m0, Tq, stride_o_b, stride_o_h, stride_o_t, BLOCK_M, HEAD_DIM, False)
    do = _load_rows(DO_ptr, b, h, m0, Tq, stride_do_b, stride_do_h, stride_do_t, BLOCK_M, HEAD_DIM, False)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA_ptr + (b * H + h).to(tl.int64) * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _attention_bwd_dkdv_step(dk, dv, k, v, Q_ptr, DO_ptr, LSE_bh, DELTA_bh, b, h, n0, start_m,
                             stride_q_b, stride_q_h, stride_q_t, stride_do_b, stride_do_h,
                             stride_do_t, Tq, shift, qk_scale, seed, bh, dropout_p, keep_scale,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                             MASKED: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr,
                             DOT_PRECISION: tl.constexpr):
    """Query rows [start_m, start_m + BLOCK_M) against keys [n0, n0 + BLOCK_N): transposed
    (BLOCK_N, BLOCK_M) tiles of P^T and dS^T; rows >= Tq get lse = +inf, hence P = 0."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Tq
    q = _load_rows(Q_ptr, b, h, start_m, Tq, stride_q_b, stride_q_h, stride_q_t, BLOCK_M, HEAD_DIM, TMA)
    lse2 = tl.load(LSE_bh + offs_m, mask=row_ok, other=_INF) * 1.4426950408889634
    qkt = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
    pt = tl.exp2(qkt * qk_scale - lse2[None, :])
    if MASKED:
        pt = tl.where(offs_n[:, None] <= offs_m[None, :] + shift, pt, 0.0)
    do = _load_rows(DO_ptr, b, h, start_m, Tq, stride_do_b, stride_do_h, stride_do_t, BLOCK_M, HEAD_DIM, TMA)
    delta = tl.load(DELTA_bh + offs_m, mask=row_ok, other=0.0)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
    if DROPOUT:
        keep = tl.trans(_attention_dropout_keep(seed, bh, offs_m, n0, dropout_p, BLOCK_N))
        dv = tl.dot(tl.where(keep, pt * keep_scale, 0.0).to(do.dtype), do, dv,
                    input_precision=DOT_PRECISION)
        dpt = tl.where(keep, dpt * keep_scale, 0.0)
    else:
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attention_bwd_dq_inner(dq, q, do, lse2, delta, K_ptr, V_ptr, b, h, stride_k_b, stride_k_h,
                            stride_k_t, stride_v_b, stride_v_h, stride_v_t, offs_m, lo, hi, Tk,
                            shift, qk_scale, seed, bh, dropout_p, keep_scale,
                            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
                            DROPOUT: tl.constexpr, TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """KV blocks [lo, hi) for one query block of dq; keys >= Tk read as 0 and add nothing."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K_ptr, b, h, start_n, Tk, stride_k_b, stride_k_h, stride_k_t, BLOCK_N, HEAD_DIM, TMA)
        v = _load_rows(V_ptr, b, h, start_n, Tk, stride_v_b, stride_v_h, stride_v_t, BLOCK_N, HEAD_DIM, TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(qk * qk_scale - lse2[:, None])
        if MASKED:
            p = tl.where(offs_n[None, :] <= offs_m[:, None] + shift, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if DROPOUT:
            keep = _attention_dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["seed"])
def _attention_bwd_kernel(Q_ptr, K_ptr, V_ptr, DO_ptr, DQ_ptr, DK_ptr, DV_ptr, LSE_ptr, DELTA_ptr,
                          stride_q_b, stride_q_h, stride_q_t,
                          stride_k_b, stride_k_h, stride_k_t,
                          stride_v_b, stride_v_h, stride_v_t,
                          stride_do_b, stride_do_h, stride_do_t,
                          stride_dq_b, stride_dq_h, stride_dq_t,
                          stride_dk_b, stride_dk_h, stride_dk_t,
                          stride_dv_b, stride_dv_h, stride_dv_t,
                          H, Tq, Tk, qk_scale, sm_scale, seed, dropout_p, keep_scale,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                          CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    """Attention backward: dk, dv for one block of keys, then dq for one block of queries.

    Grid: (max(cdiv(Tk, BLOCK_N), cdiv(Tq, BLOCK_M)), nh, B). Program (j, h, b) of head (b, h):
      1. if j * BLOCK_N < Tk: dk and dv of keys [j * BLOCK_N, +BLOCK_N), looping over the query
         rows that see them, BLOCK_M at a time: with CAUSAL first the BLOCK_N rows from the first
         one that sees key j * BLOCK_N (masked; a compile-time trip count), then the rest up to
         Tq unmasked.
      2. if j * BLOCK_M < Tq: dq of queries [j * BLOCK_M, +BLOCK_M), looping over key blocks like
         the forward (the diagonal stretch masked first, then the unmasked prefix).
    With CAUSAL and BLOCK_M == BLOCK_N the two jobs of a program add up to about the same work
    for every j (a late key block sees few queries, a late query block many keys).
    Q_ptr, DO_ptr, DQ_ptr: (B, nh, Tq, hs); K_ptr, V_ptr, DK_ptr, DV_ptr: (B, nh, Tk, hs); one
    dtype, unit head-dim stride; with TMA 4-D tensor descriptors (blocks [1, 1, BLOCK_M, hs] for the query-side tensors,
    [1, 1, BLOCK_N, hs] for the key side), else pointers with the strides given. LSE (natural
    log) and DELTA: (B, nh, Tq) fp32 contiguous.
    On-chip: phase 1 keeps k, v and the dk, dv (BLOCK_N, hs) fp32 accumulators, per step one q
    and one do tile and the (BLOCK_N, BLOCK_M) tiles of P^T and dS^T; phase 2 keeps q, do, lse,
    delta and the dq (BLOCK_M, hs) accumulator, per step one K and one V tile.
    Cost per (b, h): 14 * Tq * Tk * hs FLOPs (7 dots, recomputing S and dP in both phases; about
    half with CAUSAL); HBM reads K, V, Q, dO once per program that needs them.
    Accumulation: fp32. No atomics: every dk, dv, dq element is written once by one program.
    Constraints as for the forward, and BLOCK_N a multiple of BLOCK_M.
    """
    tl.static_assert(HEAD_DIM == 16 or HEAD_DIM == 32 or HEAD_DIM == 64 or HEAD_DIM == 128)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_N % BLOCK_M == 0)
    j = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    bh = b * H + h
    shift = Tk - Tq
    LSE_bh = LSE_ptr + bh.to(tl.int64) * Tq
    DELTA_bh = DELTA_ptr + bh.to(tl.int64) * Tq

    n0 = j * BLOCK_N
    if n0 < Tk:
        k = _load_rows(K_ptr, b, h, n0, Tk, stride_k_b, stride_k_h, stride_k_t, BLOCK_N, HEAD_DIM, TMA)
        v = _load_rows(V_ptr, b, h, n0, Tk, stride_v_b, stride_v_h, stride_v_t, BLOCK_N, HEAD_DIM, TMA)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        lo = n0 * 0
        if CAUSAL:
            # Rows [n0 - shift, n0 - shift + BLOCK_N - 1) see part of the block; earlier rows
            # see none of it. BLOCK_N rows from the first that sees key n0 cover the diagonal.
            lo = tl.maximum(n0 - shift, 0)
            for step in tl.static_range(BLOCK_N // BLOCK_M):
                dk, dv = _attention_bwd_dkdv_step(
                    dk, dv, k, v, Q_ptr, DO_ptr, LSE_bh, DELTA_bh, b, h, n0, lo + step * BLOCK_M,
                    stride_q_b, stride_q_h, stride_q_t, stride_do_b, stride_do_h, stride_do_t,
                    Tq, shift, qk_scale, seed, bh, dropout_p, keep_scale, BLOCK_M, BLOCK_N,
                    HEAD_DIM, True, DROPOUT, TMA, DOT_PRECISION)
            lo += BLOCK_N
        for start_m in range(lo, Tq, BLOCK_M):
            dk, dv = _attention_bwd_dkdv_step(
                dk, dv, k, v, Q_ptr, DO_ptr, LSE_bh, DELTA_bh, b, h, n0, start_m,
                stride_q_b, stride_q_h, stride_q_t, stride_do_b, stride_do_h, stride_do_t,
                Tq, shift, qk_scale, seed, bh, dropout_p, keep_scale, BLOCK_M, BLOCK_N,
                HEAD_DIM, False, DROPOUT, TMA, DOT_PRECISION)
        _store_rows(DK_ptr, dk * sm_scale, b, h, n0, Tk, stride_dk_b, stride_dk_h, stride_dk_t,
                    BLOCK_N, HEAD_DIM, TMA)
        _store_rows(DV_ptr, dv, b, h, n0, Tk, stride_dv_b, stride_dv_h, stride_dv_t,
                    BLOCK_N, HEAD_DIM, TMA)

    m0 = j * BLOCK_M
    if m0 < Tq:
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Tq
        q = _load_rows(Q_ptr, b, h, m0, Tq, stride_q_b, stride_q_h, stride_q_t, BLOCK_M, HEAD_DIM, TMA)
        do = _load_rows(DO_ptr, b, h, m0, Tq, stride_do_b, stride_do_h, stride_do_t, BLOCK_M, HEAD_DIM, TMA)
        lse2 = tl.load(LSE_bh + offs_m, mask=row_ok, other=_INF) * 1.4426950408889634
        delta = tl.load(DELTA_bh + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if CAUSAL:
            n_full = (m0 + shift + 1) // BLOCK_N * BLOCK_N
            n_end = tl.minimum(Tk, m0 + BLOCK_M + shift)
            dq = _attention_bwd_dq_inner(dq, q, do, lse2, delta, K_ptr, V_ptr, b, h, stride_k_b,
                                         stride_k_h, stride_k_t, stride_v_b, stride_v_h,
                                         stride_v_t, offs_m, n_full, n_end, Tk, shift, qk_scale,
                                         seed, bh, dropout_p, keep_scale, BLOCK_N, HEAD_DIM, True,
                                         DROPOUT, TMA, DOT_PRECISION)
        else:
            n_full = Tk
        dq = _attention_bwd_dq_inner(dq, q, do, lse2, delta, K_ptr, V_ptr, b, h, stride_k_b, stride_k_h,
                                     stride_k_t, stride_v_b, stride_v_h, stride_v_t, offs_m, 0,
                                     n_full, Tk, shift, qk_scale, seed, bh, dropout_p, keep_scale,
                                     BLOCK_N, HEAD_DIM, False, DROPOUT, TMA, DOT_PRECISION)
        _store_rows(DQ_ptr, dq * sm_scale, b, h, m0, Tq, stride_dq_b, stride_dq_h, stride_dq_t,
                    BLOCK_M, HEAD_DIM, TMA)


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
    n0 = tl.program_id(1) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    keep = _attention_dropout_keep(seed, bh, offs_m, n0, dropout_p, BLOCK_N)
    rows = bh.to(tl.int64) * Tq + offs_m[:, None]
    ptrs = MASK_ptr + rows * Tk + offs_n[None, :]
    tl.store(ptrs, keep, mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk))


# =============================================================================================
# Configs. The candidates are data: per (kernel, arch, head-dim class, dropout) a list of
# (BLOCK_M, BLOCK_N, num_warps, num_stages), best first, then small tiles for short sequences.
# ``config_candidates`` keeps those that fit the target's shared memory and whose tiles do not
# exceed the sequence lengths rounded up to a power of two; the launchers take the one that this
# device's tuning table names for the call (kernels/tuned/, measured by scripts/tune.py), else
# the first (``pick_config``). The choice is a pure function of the table and (arch, hs, dtype,
# dropout, causal, Tq, Tk), so gradients are bit-reproducible from run to run (autotuning by
# timing at run time would let block sizes, hence summation order, vary between processes).
# Every candidate is compiled for sm_80 and sm_90 by tests/test_aot_attention.py,
# which fails on register spills, local memory, shared memory over the limit and, on sm_90,
# on ptxas' serialized-wgmma advisory (C7515). On sm_90 the backward of hs <= 64 keeps 2 blocks
# per SM (4 warps, <= 255 registers); hs = 128 needs 8 warps for its (64, 128) dk and dv
# accumulators, one block per SM. On sm_80 (mma.sync holds both operands in registers) dropout's
# Philox rounds need the smaller (32, 32) tiles.
# =============================================================================================


_CANDIDATES = {
    # kernel, arch, hs class (64: hs <= 64; 128), dropout: [(BLOCK_M, BLOCK_N, warps, stages)]
    ("fwd", 90, 64, False): [(128, 64, 4, 3), (64, 64, 4, 3)],
    ("fwd", 90, 64, True): [(128, 64, 8, 3), (64, 64, 4, 3)],
    ("fwd", 90, 128, False): [(128, 64, 8, 3), (64, 64, 4, 3)],
    ("fwd", 90, 128, True): [(128, 64, 8, 3), (64, 64, 4, 3)],
    ("fwd", 80, 64, False): [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    ("fwd", 80, 64, True): [(128, 64, 8, 3), (64, 64, 8, 3)],
    ("fwd", 80, 128, False): [(128, 32, 8, 2), (64, 32, 8, 2)],
    ("fwd", 80, 128, True): [(64, 32, 8, 2)],
    ("bwd", 90, 64, False): [(64, 64, 4, 3)],
    ("bwd", 90, 64, True): [(64, 64, 4, 3)],
    ("bwd", 90, 128, False): [(64, 64, 8, 2)],
    ("bwd", 90, 128, True): [(64, 64, 8, 2)],
    ("bwd", 80, 64, False): [(64, 64, 8, 2), (32, 32, 4, 2)],
    ("bwd", 80, 64, True): [(32, 32, 4, 2)],
    ("bwd", 80, 128, False): [(64, 64, 8, 2), (32, 32, 4, 2)],
    ("bwd", 80, 128, True): [(32, 32, 4, 2)],
}
# Short sequences (decode, Tq = 1): tiles that the prune filter keeps when the big ones exceed T.
_SMALL = {"fwd": [(16, 64, 4, 2), (16, 32, 4, 2)], "bwd": [(16, 16, 4, 2)]}

# fp32 runs IEEE dots on CUDA cores, a correctness path rather than a fast one: the smallest
# tiles that compile without spills for every arch and head dim.
_FP32_CONFIGS = {"fwd": (16, 32, 8, 2), "bwd": (16, 16, 8, 2)}

# CPU (interpreter) configs: one fixed, small choice; BLOCK_M != BLOCK_N so the tests exercise
# the unequal-tile diagonal logic (and the backward's multi-step masked stretch).
_INTERPRETER_CONFIGS = {"fwd": (64, 32, 1, 1), "bwd": (32, 64, 1, 1)}
# Under the interpreter the pointer path runs unless this is True: then fp16/bf16 take the
# sm_90 tensor-descriptor path, which the interpreter emulates with masked loads (tests set it).
_INTERPRETER_TMA = False


def _cfg(block_m, block_n, num_warps, num_stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps,
                         num_stages=num_stages)


def candidates(kind, arch, head_dim, dropout):
    """Every config ``config_candidates`` may offer for ``kind`` ("fwd", "bwd") on sm_<arch> (80, 90)."""
    key = (kind, 90 if arch >= 90 else 80, 64 if head_dim <= 64 else 128, bool(dropout))
    return [_cfg(*c) for c in _CANDIDATES[key] + _SMALL[kind]]


def _shared_bytes(kind, cfg, head_dim, elt):
    """Upper estimate of a config's shared memory: pipelined tiles plus staging buffers."""
    bm, bn, s = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_stages
    if kind == "fwd":  # K and V tiles per stage, q, and P staged for the second dot
        return elt * (s * 2 * bn * head_dim + bm * head_dim + bm * bn)
    # bwd: per stage a q, do pair (phase 1) and a k, v pair (phase 2), the owned k, v and q, do
    # living in those buffers' place; P^T, dS^T and dS staged.
    return elt * (s * 2 * (bm + bn) * head_dim + 3 * bm * bn)


def config_candidates(kind, arch, head_dim, dtype, dropout, Tq, Tk, shared_limit):
    """The configs ``kind`` ("fwd", "bwd") may launch with on sm_<arch>, best first: the
    candidates that fit ``shared_limit`` bytes and whose tiles do not exceed the padded sequence
    lengths (keeping at least the smallest). fp32 has only ``_FP32_CONFIGS[kind]``. The
    launchers take the tuned one among them (``fastgpt.kernels.tuning``), else the first;
    ``scripts/tune.py`` times them all."""
    if dtype == torch.float32:
        return [_cfg(*_FP32_CONFIGS[kind])]
    elt = torch.finfo(dtype).bits // 8
    fits = [c for c in candidates(kind, arch, head_dim, dropout)
            if _shared_bytes(kind, c, head_dim, elt) <= shared_limit]
    tq = max(16, triton.next_power_of_2(Tq))
    tk = max(16, triton.next_power_of_2(Tk))
    kept = [c for c in fits if c.kwargs["BLOCK_M"] <= tq and c.kwargs["BLOCK_N"] <= tk]
    return kept or fits[-1:]


def pick_config(kind, arch, head_dim, dtype, dropout, Tq, Tk, shared_limit):
    """The launch config of ``kind`` on sm_<arch> without a tuning table: the first of
    ``config_candidates``."""
    return config_candidates(kind, arch, head_dim, dtype, dropout, Tq, Tk, shared_limit)[0]


def use_tma(arch, dtype):
    """Whether tiles move through TMA tensor descriptors: sm_90+ with fp16/bf16."""
    return TensorDescriptor is not None and arch >= 90 and dtype != torch.float32


def device_target(device):
    """(arch, shared-memory bytes per block) of a CUDA device: arch 90 for Hopper and later,
    else 80; what the candidate lists, the prune filter and the load path are chosen by."""
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(device)
    arch = 90 if major >= 9 else 80
    try:
        props = triton.runtime.driver.active.utils.get_device_properties(device.index)
        limit = props["max_shared_mem"]
    except Exception:  # older driver utils: fall back to the table
        limit = SHARED_MEMORY_PER_BLOCK.get(major * 10 + minor, SHARED_MEMORY_PER_BLOCK[arch])
    return arch, limit


def config_fields(cfg):
    """A config as the tuning table records it."""
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def tuning_key(head_dim, dtype, dropout, causal, tma, Tq, Tk):
    """The tuning-table key of a call: what the choice depends on beyond the device. Sequence
    lengths share an entry per power of two, as they share the pruned candidate list."""
    return {"head_dim": head_dim, "dtype": dtype, "dropout": bool(dropout), "causal": bool(causal),
            "tma": bool(tma), "Tq": tuning.bucket(Tq), "Tk": tuning.bucket(Tk)}


def _plan(kind, device, head_dim, dtype, dropout, causal, Tq, Tk):
    """(config, tma) for a launch on ``device``."""
    if device.type != "cuda":
        return _cfg(*_INTERPRETER_CONFIGS[kind]), _INTERPRETER_TMA and use_tma(90, dtype)
    index = torch.cuda.current_device() if device.index is None else device.index
    return _tuned_plan(kind, index, head_dim, dtype, bool(dropout), bool(causal),
                       tuning.bucket(Tq), tuning.bucket(Tk))


@tuning.cached
def _tuned_plan(kind, index, head_dim, dtype, dropout, causal, Tq, Tk):
    # Memoised: it runs on every launch. Tq, Tk come as powers of two: the prune filter and the
    # table key see no more of them.
    device = torch.device("cuda", index)
    arch, limit = device_target(device)
    tma = use_tma(arch, dtype)
    cfg = tuning.pick(f"attention.{kind}", device, tuning_key(head_dim, dtype, dropout, causal, tma, Tq, Tk),
                      config_candidates(kind, arch, head_dim, dtype, dropout, Tq, Tk, limit), config_fields)
    return cfg, tma


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
    # Batch, head and time strides. A size-1 dimension is never indexed past 0: report stride 0
    # so the alignment contract does not depend on whatever stride a view left there.
    return tuple(0 if t.shape[i] == 1 else t.stride(i) for i in range(3))


def _follows_contract(t):
    """16-byte-aligned data, unit head-dim stride, batch/head/time strides multiples of 16
    elements: what the pointer path's vector loads and TMA's descriptors both need."""
    return (t.stride(3) == 1 or t.shape[3] == 1) and t.data_ptr() % 16 == 0 \
        and all(s % 16 == 0 for s in _strides(t))


def _to_contract(t):
    # Natural layouts, including q/k/v views of one (B, T, 3, nh, hs) projection, already
    # follow the contract and are used in place; anything else (a strided head dim, odd
    # strides, a misaligned offset) is copied once.
    if _follows_contract(t):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _descriptor(t, block_rows):
    """A TMA descriptor over the (B, nh, T, hs) tensor ``t`` with blocks [1, 1, block_rows, hs].

    Size-1 dimensions get the stride of a contiguous layout (they are only ever indexed at 0),
    so their strides meet TMA's 16-byte rule whatever the view left there."""
    shape = list(t.shape)
    strides = list(t.stride())
    for i in (2, 1, 0):
        if shape[i] == 1:
            strides[i] = shape[i + 1] * strides[i + 1]
    return TensorDescriptor(t, shape, strides, [1, 1, block_rows, shape[3]])


def _operands(tma, tensors_and_rows):
    """Kernel operands: descriptors (TMA) or the tensors themselves (pointer path)."""
    if tma:
        return [_descriptor(t, rows) for t, rows in tensors_and_rows]
    return [t for t, _ in tensors_and_rows]


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
    if B > ATTENTION_MAX_BATCH or H > ATTENTION_MAX_HEADS:
        raise ValueError(f"q has B={B}, nh={H}; each must be <= {ATTENTION_MAX_BATCH} (the grid's "
                         f"batch and head axes)")
    if B * H >= 2**31 or max(Tq, Tk) >= 2**31:
        raise ValueError(f"q has B * nh = {B * H}, Tq={Tq}, Tk={Tk}; each must be < 2**31")
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


def attention_fwd(q, k, v, causal: bool, scale: float, dropout_p: float = 0.0, seed: int = 0,
                  key_padding_start=None):
    """Fused attention forward. Returns ``(o, lse)``.

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs), Tq <= Tk; same dtype (fp16, bf16 or fp32) and
    device; hs in {16, 32, 64, 128}; B and nh at most 65535 each. Any strided views are read in
    place when their data is 16-byte aligned and their batch/head/time strides are multiples of
    16 elements with a unit head-dim stride (true of every natural layout, e.g. the q/k/v views
    of one (B, T, 3, nh, hs) projection); other inputs are copied first. ``causal`` masks
    bottom-right aligned: query i sees keys j <= i + Tk - Tq. ``scale`` multiplies q k^T
    (usually hs ** -0.5). With ``dropout_p`` > 0 the probabilities are dropped with the Philox
    mask of ``seed`` (see ``dropout_mask``) and the kept ones scaled by 1 / (1 - dropout_p).
    fp32 inputs use IEEE fp32 dots (``input_precision="ieee"``, no TF32).

    ``key_padding_start``: None, or an int32 (B,) tensor on q's device for left-padded batches
    (generation): keys j < key_padding_start[b] of batch row b are masked as well; a query row
    left with no key gets o = 0 and lse = -inf. ``attention_bwd`` has no such mask: it is a
    forward (inference) option.

    o: (B, nh, Tq, hs) contiguous, q's dtype. lse: (B, nh, Tq) fp32, the natural-log
    logsumexp of each masked row of ``scale * q @ k^T`` (dropout does not enter it).
    """
    _check_inputs(q, k, v, scale, dropout_p, seed)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if key_padding_start is not None:
        pad = key_padding_start
        if not isinstance(pad, torch.Tensor) or pad.dtype != torch.int32 or tuple(pad.shape) != (B,):
            got = (tuple(pad.shape), pad.dtype) if isinstance(pad, torch.Tensor) else type(pad).__name__
            raise ValueError(f"key_padding_start must be an int32 tensor of shape ({B},), got {got}")
        if pad.device != q.device:
            raise ValueError(f"key_padding_start is on {pad.device} but q is on {q.device}")
        key_padding_start = pad.contiguous()
    o = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    q, k, v = _to_contract(q), _to_contract(k), _to_contract(v)
    cfg, tma = _plan("fwd", q.device, D, q.dtype, dropout_p > 0, causal, Tq, Tk)
    with on_device(q):
        _launch_fwd(q, k, v, o, lse, causal, scale, dropout_p, seed, cfg, tma, key_padding_start)
    return o, lse


def _launch_fwd(q, k, v, o, lse, causal, scale, dropout_p, seed, cfg, tma, pad=None):
    """Launch the forward with an explicit config and load path; returns what Triton's launch
    returns (the compiled kernel, whose n_spills the sweep reads)."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    operands = _operands(tma, [(q, bm), (k, bn), (v, bn), (o, bm)])
    return _attention_fwd_kernel[(triton.cdiv(Tq, bm), H, B)](
        *operands, lse, lse if pad is None else pad, *_strides(q), *_strides(k), *_strides(v),
        *_strides(o), H, Tq, Tk, scale * LOG2E, _seed64(seed), float(dropout_p),
        1.0 / (1.0 - dropout_p), BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal),
        KEY_PAD=pad is not None, DROPOUT=dropout_p > 0,
        TMA=tma, DOT_PRECISION=_dot_precision(q.dtype), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)


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
    cfg, tma = _plan("bwd", q.device, D, q.dtype, dropout_p > 0, causal, Tq, Tk)
    with on_device(q):
        _launch_bwd(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale, dropout_p, seed, cfg, tma)
    return dq, dk, dv


def _launch_bwd(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale, dropout_p, seed, cfg, tma):
    """Launch the preprocess and the backward kernel with an explicit config and load path;
    returns what Triton's launch of the backward kernel returns."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    pre_bm = 64 if q.device.type == "cuda" else 32
    _attention_bwd_preprocess_kernel[(triton.cdiv(Tq, pre_bm), H, B)](
        o, do, delta, *_strides(o), *_strides(do), H, Tq, BLOCK_M=pre_bm, HEAD_DIM=D)
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    operands = _operands(tma, [(q, bm), (k, bn), (v, bn), (do, bm), (dq, bm), (dk, bn), (dv, bn)])
    grid = (max(triton.cdiv(Tk, bn), triton.cdiv(Tq, bm)), H, B)
    return _attention_bwd_kernel[grid](
        *operands, lse, delta, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dq), *_strides(dk), *_strides(dv),
        H, Tq, Tk, scale * LOG2E, scale, _seed64(seed), float(dropout_p), 1.0 / (1.0 - dropout_p),
        BLOCK_M=bm, BLOCK_N=bn, HEAD_DIM=D, CAUSAL=bool(causal), DROPOUT=dropout_p > 0, TMA=tma,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# Tuning interface (scripts/tune.py): TUNABLE names the kernels a sweep times;
# device_target, config_candidates, config_fields and tuning_key (above) give their candidates
# and table key; launch_with_config runs one of them with an explicit config on tensors that
# follow the launchers' contract (q, k, v, do in the alignment contract; for "bwd", lse from
# the forward; outputs and delta, (B, nh, Tq) fp32, allocated by the caller).
TUNABLE = ("fwd", "bwd")


def launch_with_config(kind, cfg, *, q, k, v, causal, scale, dropout_p=0.0, seed=0, tma=None,
                       o=None, lse=None, do=None, delta=None, dq=None, dk=None, dv=None):
    """Launch kernel ``kind`` of TUNABLE with ``cfg``: "fwd" writes (o, lse); "bwd" runs the
    preprocess (writing delta from o and do) and the backward kernel (writing dq, dk, dv).
    ``tma``: the load path, default the launchers' for q's device and dtype. Returns Triton's
    compiled kernel (None under the interpreter)."""
    if kind not in TUNABLE:
        raise ValueError(f"kind must be one of {TUNABLE}, got {kind!r}")
    if tma is None:
        tma = use_tma(device_target(q.device)[0], q.dtype) if q.is_cuda else _INTERPRETER_TMA and use_tma(90, q.dtype)
    with on_device(q):
        if kind == "fwd":
            return _launch_fwd(q, k, v, o, lse, causal, scale, dropout_p, seed, cfg, tma)
        return _launch_bwd(do, q, k, v, o, lse, delta, dq, dk, dv, causal, scale, dropout_p, seed, cfg, tma)


def dropout_mask(B, H, Tq, Tk, dropout_p, seed, device):
    """The keep-mask (B, nh, Tq, Tk) bool that the kernels apply for ``(dropout_p, seed)``.

    True means kept. Generated by a Triton kernel through the same Philox helper as the
    forward and backward, so references built with it match the kernels exactly.
    """
    _check_dropout(dropout_p, seed)
    if B * H > 65535:
        raise ValueError(f"dropout_mask needs B * nh <= 65535, got {B * H}")
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
