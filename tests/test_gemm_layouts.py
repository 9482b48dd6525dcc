"""The CUTLASS kernels' index arithmetic, checked on the host without a GPU.

fastgpt._C evaluates, with the kernels' own C++ types and code (see csrc/gemm.h):
  * for the Ampere-path kernels, every global load and store of the chosen CTAs: which smem
    slot or accumulator each element goes to, its global coordinate, predicate and offset;
  * for the Hopper kernels, the TMA descriptors their Params hold (recorded instead of encoded).
The tests compare both with the head-split layout (3, B, H, T, D) computed here independently,
on awkward shapes: T not a multiple of the tile, B*T below one tile, one head, head dims of 8,
64 and 128, strided x, and sizes whose offsets need 64 bits.
"""
import numpy as np
import pytest

_C = pytest.importorskip("fastgpt._C")
if not (_C.cuda_built() and hasattr(_C, "_qkv_trace_sm80")):
    pytest.skip("fastgpt._C was built without its CUDA part", allow_module_level=True)

# Stand-in pointers of the plans (csrc/cutlass_common.cuh: fake_pointers).
A_PTR, B_PTR, D_PTR, AUX_PTR = 0x100000, 0x200000, 0x400000, 0x500000
TILE_M, TILE_N, TILE_K80 = 128, 128, 32


# ---- the layouts, written out independently of the C++ ----

class Qkv:
    """Shapes of one QKV problem and the element offset of every operand element, with the
    C++ trace's conventions: nested modes flattened column-major, i.e. a row (d, h, s) of W or
    of the heads is s*C + h*D + d, and a (t, b) token index is t + T*b."""

    def __init__(self, B, T, C, H, sb=None, st=None):
        self.B, self.T, self.C, self.H, self.D = B, T, C, H, C // H
        self.st = C if st is None else st
        self.sb = T * self.st if sb is None else sb

    def args(self, dtype="bfloat16"):
        return (self.B, self.T, self.C, self.H, self.sb, self.st, dtype)

    def heads(self, r, t, b):  # offset in (3, B, H, T, D) of W-row r = (d, h, s), time t, batch b
        s, rem = np.divmod(r, self.C)
        h, d = np.divmod(rem, self.D)
        return (((s * self.B + b) * self.H + h) * self.T + t) * self.D + d

    def x(self, t, c, b):
        return b * self.sb + t * self.st + c

    def operands(self, kind):
        """(A rows, A cols, B rows, D cols, offset_a(row, k, lb), offset_b(row, k, lb), offset_d(row, col, lb), batches)."""
        T, C, B = self.T, self.C, self.B
        if kind == "qkv_fwd":  # out(t, r, b) = x(t, c, b) . W(r, c)
            return (T, C, 3 * C, 3 * C, lambda m, k, lb: self.x(m, k, lb), lambda n, k, lb: n * C + k,
                    lambda m, n, lb: self.heads(n, m, lb), B)
        if kind == "qkv_dx":  # dx(t, c, b) = g(t, r, b) . W(r, c)
            return (T, 3 * C, C, C, lambda m, k, lb: self.heads(k, m, lb), lambda n, k, lb: k * C + n,
                    lambda m, n, lb: lb * T * C + m * C + n, B)
        # dW(r, c) = g(r, (t, b)) . x(c, (t, b))
        return (3 * C, T * B, C, C, lambda m, k, lb: self.heads(m, k % T, k // T),
                lambda n, k, lb: self.x(k % T, n, k // T), lambda m, n, lb: m * C + n, 1)


def _fc_operands(M, N, K, ld):
    return (M, K, N, N, lambda m, k, lb: m * ld + k, lambda n, k, lb: n * K + k, lambda m, n, lb: m * N + n, 1)


def _fc_dgelu_operands(M, N, K, ld):
    """The MLP backward's dGELU GEMM: dpre(m, n) = grad(m, k) Wp(k, n), grad (M, K) with row
    stride ld, Wp = c_proj.weight (K, N) contiguous (B is N-major), dpre and pre (M, N)."""
    return (M, K, N, N, lambda m, k, lb: m * ld + k, lambda n, k, lb: k * N + n, lambda m, n, lb: m * N + n, 1)


# ---- Ampere path: every load and store of the traced CTAs ----

def _code(*cols):
    """One int64 per row of the integer columns, equal exactly where every column is equal."""
    out = np.zeros(len(cols[0]), dtype=np.int64)
    span = 1
    for c in cols:
        c = np.asarray(c, dtype=np.int64)
        lo, size = (int(c.min()), int(c.max()) - int(c.min()) + 1) if len(c) else (0, 1)
        span *= size
        assert span < 2**63, "the columns do not fit one int64 code"
        out = out * size + (c - lo)
    return out


def _distinct(*cols):
    return len(np.unique(_code(*cols)))


def _one_value_each(keys, values, what):
    """Each key (a tuple of columns) maps to one value (a tuple of columns)."""
    assert _distinct(*keys, *values) == _distinct(*keys), f"{what}: one slot holds several global coordinates"


def _lookup(keys, values, queries):
    """values at the rows whose key (one code per row) equals each query's (every query present)."""
    order = np.argsort(keys, kind="stable")
    at = np.searchsorted(keys[order], queries)
    assert (at < len(keys)).all() and (keys[order][np.minimum(at, len(keys) - 1)] == queries).all(), "a lookup missed"
    return values[order][at]


def _check_trace(loads, stores, operands, all_ctas=True):
    """Grouped with integer codes rather than loops over CTAs: the GPT-2-sized traces hold
    millions of accesses."""
    rows_a, k_extent, rows_b, cols_d, off_a, off_b, off_d, batches = operands
    loads, stores = loads.numpy(), stores.numpy()
    row_of = {}  # operand -> (CTA, batch, smem row, global row) of its loads
    k_cols = []  # per operand: (batch, k tile, smem k, global k)
    for op, off in ((0, off_a), (1, off_b)):
        name = "AB"[op]
        _, mn, lb, kt, srow, sk, grow, gk, inb, pred, offset = loads[loads[:, 0] == op].T
        assert len(mn), f"operand {name}: no loads traced"
        ok = inb == 1
        assert np.array_equal(offset[ok], off(grow[ok], gk[ok], lb[ok])), f"operand {name}: wrong offsets"
        # A vector's predicate is every one of its elements' range check (no vector straddles an edge).
        assert np.array_equal(pred, inb), f"operand {name}: a 16-byte vector straddles the edge of the tensor"
        # Per (CTA, batch, k tile): every smem slot filled once.
        tiles = _distinct(mn, lb, kt)
        assert ((srow >= 0) & (srow < TILE_M) & (sk >= 0) & (sk < TILE_K80)).all(), f"operand {name}: smem slot out of the tile"
        assert _distinct(mn, lb, kt, srow, sk) == len(mn) == tiles * TILE_M * TILE_K80, f"operand {name}: smem slots not filled once"
        # The smem tile is a product: a slot's global row depends on its smem row only (and not on
        # the k tile: rows do not move with k), its global k on its smem k.
        _one_value_each((mn, lb, srow), (grow,), f"operand {name} rows")
        _one_value_each((mn, lb, kt, sk), (gk,), f"operand {name} k")
        row_of[op] = (mn, lb, srow, grow)
        k_cols.append((lb, kt, sk, gk))
        if all_ctas:  # every in-range element of the CTA's rows is loaded once, all of K covered
            m, b_, r, k = mn[ok], lb[ok], grow[ok], gk[ok]
            assert _distinct(m, b_, r, k) == ok.sum(), f"operand {name}: an element loaded twice"
            assert ((k >= 0) & (k < k_extent)).all() and _distinct(m, b_, k) == _distinct(m, b_) * k_extent, \
                f"operand {name}: K not covered"
    # The MMA pairs A and B through the smem k index: it must mean the same global k in both.
    lb, kt, sk, gk = (np.concatenate(c) for c in zip(*k_cols))
    _one_value_each((lb, kt, sk), (gk,), "A and B disagree on a smem slot's global k")
    # Stores: the right address, every output element exactly once, and the accumulator at tile
    # (row, col) belongs to A's smem row `row` and B's smem row `col`.
    cm, cn, lb, trow, tcol, grow, gcol, inb, offset = stores.T
    ok = inb == 1
    assert np.array_equal(offset[ok], off_d(grow[ok], gcol[ok], lb[ok])), "output: wrong offsets"
    if all_ctas:
        assert np.array_equal(np.sort(offset[ok]), np.arange(rows_a * cols_d * batches)), \
            "output: not every element written exactly once"
    for op, cta, tile, glob, what in ((0, cm, trow, grow, "rows are not A's"), (1, cn, tcol, gcol, "cols are not B's")):
        mn, lbl, srow, values = row_of[op]
        query = _code(np.concatenate([mn, cta]), np.concatenate([lbl, lb]), np.concatenate([srow, tile]))
        keys, query = query[: len(mn)], query[len(mn):]  # one coding for both sides
        assert np.array_equal(_lookup(keys, values, query), glob), f"output {what}"


QKV_SHAPES = [  # B, T, C, H, x strides (sb, st) or None
    (2, 17, 192, 3, None),    # T below one tile, D = 64
    (3, 1, 64, 8, None),      # B*T below one tile, D = 8
    (1, 200, 128, 1, None),   # one head, D = 128, T not a multiple of 128
    (2, 33, 96, 2, (33 * 104, 104)),  # padded rows of x, D = 48
    (2, 130, 768, 12, None),  # GPT-2's heads, T just past a tile
]


@pytest.mark.parametrize("kind", ["qkv_fwd", "qkv_dx", "qkv_dw"])
@pytest.mark.parametrize("B,T,C,H,strides", QKV_SHAPES)
def test_sm80_qkv_accesses(kind, B, T, C, H, strides):
    p = Qkv(B, T, C, H, *(strides or (None, None)))
    loads, stores = _C._qkv_trace_sm80(kind, *p.args(), [], False)
    _check_trace(loads, stores, p.operands(kind))


@pytest.mark.parametrize("M,N,K,ld", [(1, 64, 16, 16), (130, 136, 40, 40), (257, 3072, 768, 776)])
def test_sm80_fc_accesses(M, N, K, ld):
    loads, stores = _C._fc_trace_sm80(M, N, K, ld, "float16", "none", [], False)
    _check_trace(loads, stores, _fc_operands(M, N, K, ld))


@pytest.mark.parametrize("M,N,K,ld", [(1, 64, 16, 16), (130, 136, 40, 40), (257, 3072, 768, 776)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_sm80_fc_dgelu_accesses(M, N, K, ld, approximate):
    """The stores trace is also where the epilogue reads pre (the same layout and offsets)."""
    loads, stores = _C._fc_dgelu_trace_sm80(M, N, K, ld, "bfloat16", approximate, [], False)
    _check_trace(loads, stores, _fc_dgelu_operands(M, N, K, ld))


@pytest.mark.parametrize("kind", ["qkv_fwd", "qkv_dx"])
def test_sm80_qkv_offsets_need_64_bits(kind):
    """3*B*T*C > 2^31 (the head-split tensor: qkv_fwd's output, qkv_dx's input): the last CTA's
    offsets, computed in 64 bits, are exact."""
    p = Qkv(3, 2**17 + 5, 2048, 16)
    assert 3 * p.B * p.T * p.C > 2**31
    ops = p.operands(kind)
    rows, cols = (p.T, 3 * p.C) if kind == "qkv_fwd" else (p.T, p.C)
    loads, stores = _C._qkv_trace_sm80(kind, *p.args(), [-(-rows // TILE_M) - 1, -(-cols // 128) - 1, p.B - 1], True)
    _check_trace(loads, stores, ops, all_ctas=False)
    assert max(loads[:, 10].max(), stores[:, 8].max()) > 2**31


def test_sm80_fc_offsets_need_64_bits():
    M, N, K = 2**20 + 3, 4096, 64
    loads, stores = _C._fc_trace_sm80(M, N, K, K, "bfloat16", "tanh", [-(-M // TILE_M) - 1, N // TILE_N - 1, 0], True)
    _check_trace(loads, stores, _fc_operands(M, N, K, K), all_ctas=False)
    assert stores[:, 8].max() > 2**32


# ---- Hopper: the TMA descriptors the kernels' Params hold ----

SM90_SMEM_LIMIT = 232448  # opt-in shared memory per block on sm_90


def _qkv_tma_tensors(kind, p):
    """{pointer: [(mode, extent, element stride, box)]}: the tensors each Hopper QKV GEMM reads or
    writes through TMA, and the CTA tile (or epilogue subtile) extent its box must have per mode."""
    B, T, C, H, D = p.B, p.T, p.C, p.H, p.D
    heads = lambda d, t, h, s, b: [("d", D, 1, d), ("t", T, D, t), ("h", H, T * D, h),  # noqa: E731
                                   ("s", 3, B * H * T * D, s), ("b", B, H * T * D, b)]
    weight = lambda k, d, h: [("c", C, 1, k), ("d", D, C, d), ("h", H, D * C, h), ("s", 3, C * C, 1)]  # noqa: E731
    x = lambda c, t: [("c", C, 1, c), ("t", T, p.st, t), ("b", B, p.sb, 1)]  # noqa: E731
    if kind == "qkv_fwd":
        return {A_PTR: x(64, 128), B_PTR: weight(64, 64, 2), D_PTR: heads(32, 128, 1, 1, 1)}
    if kind == "qkv_dx":
        return {A_PTR: heads(64, 128, 1, 1, 1), B_PTR: weight(64, 64, 1),
                D_PTR: [("c", C, 1, 32), ("t", T, C, 128), ("b", B, T * C, 1)]}
    return {A_PTR: heads(64, 64, 2, 1, 1), B_PTR: x(64, 64), D_PTR: weight(32, 64, 2)}


def _check_tma(plan, tensors):
    assert plan["smem"] <= SM90_SMEM_LIMIT and plan["block"] == 384 and 0 < max(plan["grid"]) <= 132, plan
    by_address = {}
    for desc in plan["tma"]:
        assert desc["address"] not in by_address, f"two descriptors for tensor {desc['address']:#x}"
        by_address[desc["address"]] = desc
    assert set(by_address) == set(tensors), f"{plan['name']}: descriptors for {sorted(map(hex, by_address))}"
    for address, modes in tensors.items():
        desc = by_address[address]
        what = f"{plan['name']} tensor {address:#x} {desc}"
        assert desc["element_bytes"] == 2, what
        strides = [1] + [s // 2 for s in desc["strides"]]  # in elements; dim 0 is contiguous
        assert all(s % 2 == 0 for s in desc["strides"]), what
        left = list(modes)
        for extent, stride, box in zip(desc["dims"], strides, desc["box"]):
            match = [m for m in left if (m[1], m[2]) == (extent, stride)]
            assert match, f"{what}: dim (extent {extent}, stride {stride}) is no mode of the tensor {modes}"
            name, _, _, want_box = match[0]
            assert box == want_box, f"{what}: box {box} along {name}, expected {want_box}"
            left.remove(match[0])
        assert all(m[1] == 1 for m in left), f"{what}: modes {left} have no dim"


@pytest.mark.parametrize("kind", ["qkv_fwd", "qkv_dx", "qkv_dw"])
@pytest.mark.parametrize("B,T,C,H,strides", QKV_SHAPES + [(4, 2**20, 2048, 16, None)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sm90_qkv_tma_descriptors(kind, B, T, C, H, strides, dtype):
    """Every operand of the Hopper QKV GEMMs is one TMA tensor over exactly its own modes
    (the (3, B, H, T, D) layout included, up to 64-bit byte strides) with the tile's box."""
    p = Qkv(B, T, C, H, *(strides or (None, None)))
    plan = _C._qkv_plan_sm90(kind, *p.args(dtype))
    assert plan["name"] == f"{kind}_sm90_{'f16' if dtype == 'float16' else 'bf16'}"
    _check_tma(plan, _qkv_tma_tensors(kind, p))


@pytest.mark.parametrize("M,N,K,ld", [(1, 64, 16, 16), (130, 136, 40, 40), (2**20 + 3, 6400, 1600, 1608)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_sm90_fc_tma_descriptors(M, N, K, ld, approximate):
    plan = _C._fc_plan_sm90(M, N, K, ld, "bfloat16", approximate)
    assert plan["name"] == f"fc_gelu_{'erf' if approximate == 'none' else 'tanh'}_sm90_bf16"
    out = [("n", N, 1, 32), ("m", M, N, 128)]
    _check_tma(plan, {A_PTR: [("k", K, 1, 64), ("m", M, ld, 128)], B_PTR: [("k", K, 1, 64), ("n", N, K, 128)],
                      D_PTR: out, AUX_PTR: out + [("l", 1, M * N, 1)]})


@pytest.mark.parametrize("M,N,K,ld", [(1, 64, 16, 16), (130, 136, 40, 40), (2**20 + 3, 6400, 1600, 1608)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_sm90_fc_dgelu_tma_descriptors(M, N, K, ld, approximate):
    """The dGELU GEMM: grad K-major; c_proj.weight N-major as stored, (K, N), in boxes of 64 along
    n (one 128-byte swizzle atom: two boxes per 128-wide tile); dpre stored and pre loaded through
    the epilogue subtile's box; no other TMA tensor."""
    plan = _C._fc_dgelu_plan_sm90(M, N, K, ld, "float16", approximate)
    assert plan["name"] == f"fc_dgelu_{'erf' if approximate == 'none' else 'tanh'}_sm90_f16"
    out = [("n", N, 1, 32), ("m", M, N, 128)]
    _check_tma(plan, {A_PTR: [("k", K, 1, 64), ("m", M, ld, 128)], B_PTR: [("n", N, 1, 64), ("k", K, N, 64)],
                      D_PTR: out, AUX_PTR: out + [("l", 1, M * N, 1)]})


@pytest.mark.parametrize("B,T,C,H", [(2, 17, 192, 3), (1, 5, 128, 1), (2, 9, 1600, 25), (1, 3, 96, 2)])
def test_sm90_qkv_bias_node(B, T, C, H):
    """The forward epilogue's bias node (custom: CUTLASS's has no nested N): each existing output
    column of a tile gets bias[s*C + h*D + d] of that very column, every column exactly once."""
    rows = _C._qkv_bias_plan_sm90(B, T, C, H).numpy()
    tile, col, exists, bias, out_col = rows.T
    ok = exists == 1
    assert np.array_equal(bias[ok], out_col[ok]), "a column gets another column's bias"
    assert np.array_equal(np.sort(out_col[ok]), np.arange(3 * C)), "not every output column exactly once"
    assert set(col.tolist()) == set(range(TILE_N))
