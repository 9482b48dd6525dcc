"""Fused attention kernels (fastgpt.kernels.attention) against the fp32 oracle.

Oracle: ``fastgpt.reference.attention`` on fp32-upcast inputs (bottom-right causal mask when
Tq < Tk); with dropout, ``reference.attention_math`` with the kernels' own keep-mask from
``dropout_mask``. Tolerance: flash-attention's 2x rule (``helpers.assert_2x_rule``), where
"plain" is the same reference computed in the inputs' low precision.
"""
import math

import pytest
import torch

from fastgpt import reference
from fastgpt.kernels import attention as attention_kernels
from fastgpt.kernels.attention import attention_bwd, attention_fwd, dropout_mask
from helpers import assert_2x_rule


def _reference(q, k, v, causal, scale, keep=None, dropout_p=0.0):
    """fastgpt.reference in q's dtype: its attention, or with an explicit keep-mask its spelled-out form."""
    if keep is None:
        return reference.attention(q, k, v, causal=causal, scale=scale)
    return reference.attention_math(q, k, v, causal=causal, scale=scale, dropout_mask=keep, dropout_p=dropout_p)


def _leaves(*ts, dtype=None):
    return [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in ts]


def _make_qkv(B, H, Tq, Tk, D, dtype, layout, device):
    """q, k, v (B, H, T, D) in the given layout: contiguous, or strided projection views."""
    if layout == "contiguous":
        q = torch.randn(B, H, Tq, D, dtype=dtype, device=device)
        k = torch.randn(B, H, Tk, D, dtype=dtype, device=device)
        v = torch.randn(B, H, Tk, D, dtype=dtype, device=device)
    elif layout == "qkv":  # nanoGPT's c_attn output (B, T, 3, nh, hs), split and transposed
        assert Tq == Tk
        qkv = torch.randn(B, Tq, 3, H, D, dtype=dtype, device=device)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    elif layout == "padded":  # rows padded to hs + 8: odd strides, which the launcher copies
        q = torch.randn(B, H, Tq, D + 8, dtype=dtype, device=device)[..., :D]
        k = torch.randn(B, H, Tk, D + 8, dtype=dtype, device=device)[..., :D]
        v = torch.randn(B, H, Tk, D + 8, dtype=dtype, device=device)[..., :D]
    else:  # "kv": q (B, Tq, nh, hs) and a packed (B, Tk, 2, nh, hs) key/value cache
        q = torch.randn(B, Tq, H, D, dtype=dtype, device=device).transpose(1, 2)
        kv = torch.randn(B, Tk, 2, H, D, dtype=dtype, device=device)
        k, v = (t.transpose(1, 2) for t in kv.unbind(2))
    return q, k, v


def _check_against_oracle(q, k, v, causal, scale, dropout_p=0.0, seed=0):
    """Run the kernels forward and backward; check o, lse, dq, dk, dv with the 2x rule."""
    dtype = q.dtype
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    keep = dropout_mask(B, H, Tq, Tk, dropout_p, seed, q.device) if dropout_p > 0 else None

    o, lse = attention_fwd(q, k, v, causal, scale, dropout_p, seed)
    assert o.dtype == dtype and o.shape == q.shape and o.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == (B, H, Tq)
    do = torch.randn_like(o)
    dq, dk, dv = attention_bwd(do, q, k, v, o, lse, causal, scale, dropout_p, seed)

    q32, k32, v32 = _leaves(q, k, v, dtype=torch.float32)
    oracle = _reference(q32, k32, v32, causal, scale, keep, dropout_p)
    oracle_grads = torch.autograd.grad(oracle, (q32, k32, v32), do.float())
    ql, kl, vl = _leaves(q, k, v)
    plain = _reference(ql, kl, vl, causal, scale, keep, dropout_p)
    plain_grads = torch.autograd.grad(plain, (ql, kl, vl), do)

    assert_2x_rule("o", o, plain, oracle, dtype)
    for name, got, pl, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), plain_grads, oracle_grads):
        assert got.dtype == dtype
        assert_2x_rule(name, got, pl, ref, dtype)

    # lse is the natural-log logsumexp of the masked scores; they are exact fp32 products of
    # the same inputs, so only the summation order differs.
    s = (q32.detach() @ k32.detach().transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~reference.causal_mask(Tq, Tk, s.device), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(s, dim=-1), rtol=1e-5, atol=1e-5)


# (dtype, B, H, Tq, Tk, D, causal, layout): every T in {1, 17, 97, 128, 257}, every head dim,
# causal and not, strided layouts and Tq < Tk, without the full cross product.
CASES = [
    (torch.float32, 2, 2, 1, 1, 32, True, "contiguous"),
    (torch.float16, 2, 2, 1, 1, 64, False, "contiguous"),
    (torch.float32, 2, 2, 17, 17, 64, True, "contiguous"),
    (torch.float16, 2, 2, 17, 17, 32, False, "qkv"),
    (torch.float32, 1, 3, 97, 97, 32, False, "contiguous"),
    (torch.float16, 1, 3, 97, 97, 64, True, "contiguous"),
    (torch.float32, 2, 2, 128, 128, 64, True, "qkv"),
    (torch.float16, 2, 2, 128, 128, 32, False, "qkv"),
    (torch.float16, 1, 3, 257, 257, 64, True, "contiguous"),
    (torch.float32, 1, 2, 257, 257, 32, False, "contiguous"),
    (torch.float16, 1, 2, 97, 97, 16, True, "qkv"),
    (torch.float32, 2, 2, 128, 128, 16, False, "contiguous"),
    (torch.float32, 1, 2, 97, 97, 128, True, "contiguous"),
    (torch.float16, 1, 2, 17, 17, 128, False, "contiguous"),
    (torch.float16, 1, 2, 128, 128, 128, True, "qkv"),
    (torch.float32, 2, 2, 1, 97, 32, True, "kv"),
    (torch.float16, 2, 2, 1, 97, 64, False, "contiguous"),
    (torch.float32, 1, 2, 17, 257, 64, True, "contiguous"),
    (torch.float16, 1, 2, 17, 257, 32, True, "kv"),
    (torch.float16, 1, 2, 97, 128, 32, False, "kv"),
    (torch.float32, 1, 2, 33, 40, 32, True, "padded"),
    # Tk - Tq = 31: the first key block of the diagonal stretch (run first) is fully masked
    # for some rows, which a -inf initial running max would turn into NaN.
    (torch.float32, 1, 2, 97, 128, 32, True, "kv"),
]


def _case_id(case):
    dtype, B, H, Tq, Tk, D, causal, layout = case
    name = str(dtype).removeprefix("torch.")
    return f"{name}-B{B}H{H}-Tq{Tq}Tk{Tk}-D{D}-{'causal' if causal else 'full'}-{layout}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_attention_matches_oracle(case, device):
    dtype, B, H, Tq, Tk, D, causal, layout = case
    q, k, v = _make_qkv(B, H, Tq, Tk, D, dtype, layout, device)
    _check_against_oracle(q, k, v, causal, D ** -0.5)


def test_empty_inputs(device):
    q, k, v = (torch.randn(0, 2, 5, 32, device=device) for _ in range(3))
    o, lse = attention_fwd(q, k, v, True, 0.1)
    assert o.shape == q.shape and lse.shape == (0, 2, 5)
    dq, dk, dv = attention_bwd(o, q, k, v, o, lse, True, 0.1)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_attention_custom_scale(device):
    q, k, v = _make_qkv(1, 2, 33, 33, 32, torch.float32, "contiguous", device)
    _check_against_oracle(q, k, v, True, 0.37)


@pytest.mark.parametrize("dtype,Tq,Tk,causal,p", [
    (torch.float32, 97, 97, True, 0.1),
    (torch.float16, 17, 257, True, 0.3),
    (torch.float32, 33, 65, False, 0.5),
    (torch.float16, 1, 97, False, 0.2),
], ids=["fp32-97-causal", "fp16-17x257-causal", "fp32-33x65-full", "fp16-1x97-full"])
def test_dropout_matches_reference(dtype, Tq, Tk, causal, p, device):
    q, k, v = _make_qkv(1, 2, Tq, Tk, 32, dtype, "contiguous", device)
    _check_against_oracle(q, k, v, causal, 32 ** -0.5, dropout_p=p, seed=2 ** 40 + 17)


def test_dropout_seed_determinism(device):
    q, k, v = _make_qkv(1, 2, 40, 40, 32, torch.float32, "contiguous", device)
    o1, _ = attention_fwd(q, k, v, True, 32 ** -0.5, 0.25, seed=123)
    o2, _ = attention_fwd(q, k, v, True, 32 ** -0.5, 0.25, seed=123)
    o3, _ = attention_fwd(q, k, v, True, 32 ** -0.5, 0.25, seed=124)
    assert torch.equal(o1, o2)
    assert not torch.equal(o1, o3)
    assert torch.equal(dropout_mask(1, 2, 40, 40, 0.25, 123, device),
                       dropout_mask(1, 2, 40, 40, 0.25, 123, device))


def test_dropout_mask_is_a_function_of_the_element(device):
    """The mask of element (b, h, i, j) does not depend on Tq, Tk or on tiling."""
    small = dropout_mask(2, 3, 17, 33, 0.3, 99, device)
    large = dropout_mask(2, 3, 70, 130, 0.3, 99, device)
    assert torch.equal(small, large[:, :, :17, :33])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_kept_fraction(p, device):
    n = 2 * 3 * 128 * 160
    keep = dropout_mask(2, 3, 128, 160, p, 2024, device)
    frac = keep.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(frac - (1 - p)) < 5 * sigma, f"kept {frac:.4f}, expected {1 - p} +- {5 * sigma:.4f}"
    # Neighbouring rows, columns and heads are uncorrelated.
    s = keep.float() * 2 - 1
    s = s - s.mean()
    var = s.pow(2).mean()
    for name, corr in (("rows", (s[..., 1:, :] * s[..., :-1, :]).mean()),
                       ("cols", (s[..., 1:] * s[..., :-1]).mean()),
                       ("heads", (s[:, 1:] * s[:, :-1]).mean())):
        assert abs(corr / var) < 0.02, f"{name} correlation {corr / var:.4f}"


def test_dropout_zero_is_no_dropout(device):
    q, k, v = _make_qkv(1, 2, 33, 33, 32, torch.float32, "contiguous", device)
    o1, l1 = attention_fwd(q, k, v, True, 32 ** -0.5)
    o2, l2 = attention_fwd(q, k, v, True, 32 ** -0.5, 0.0, seed=77)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_backward_is_deterministic(dropout_p, device):
    q, k, v = _make_qkv(1, 2, 97, 97, 32, torch.float16, "qkv", device)
    o, lse = attention_fwd(q, k, v, True, 32 ** -0.5, dropout_p, 5)
    do = torch.randn_like(o)
    first = attention_bwd(do, q, k, v, o, lse, True, 32 ** -0.5, dropout_p, 5)
    second = attention_bwd(do, q, k, v, o, lse, True, 32 ** -0.5, dropout_p, 5)
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert torch.equal(a, b), f"{name} differs between two identical backward calls"


# --------------------------------------------------------------------------------------------
# The sm_90 path: tiles through TMA tensor descriptors. The interpreter emulates a descriptor
# load as a masked load (out-of-range rows read as 0, as TMA's zero fill), so on the CPU these
# tests run the descriptor path's indexing and its reliance on zero-filled rows; the copy engine,
# its swizzled shared-memory layout and mbarriers are only exercised on an sm_90 GPU.
# --------------------------------------------------------------------------------------------

@pytest.fixture
def tma_path(monkeypatch, device):
    """Force the descriptor path; yields a list that records every descriptor built."""
    if device == "cuda":
        if torch.cuda.get_device_capability()[0] < 9:
            pytest.skip("the TMA path needs sm_90 or newer")
    else:
        monkeypatch.setattr(attention_kernels, "_INTERPRETER_TMA", True)
    built = []
    real = attention_kernels._descriptor

    def spy(t, rows):
        built.append((tuple(t.shape), rows))
        return real(t, rows)

    monkeypatch.setattr(attention_kernels, "_descriptor", spy)
    return built


# fp16 only: the descriptor path serves 16-bit inputs (fp32 keeps the pointer path), and the
# interpreter has no bf16 dot. T off the block grid, Tq < Tk, every head dim.
TMA_CASES = [
    (2, 2, 17, 257, 32, True, "kv"),
    (1, 3, 97, 97, 64, True, "qkv"),
    (1, 2, 97, 128, 16, True, "contiguous"),
    (2, 2, 1, 97, 64, False, "contiguous"),
    (1, 2, 128, 128, 128, True, "qkv"),
    (1, 2, 97, 128, 128, False, "kv"),
    (1, 2, 33, 40, 32, True, "padded"),
]


@pytest.mark.parametrize("case", TMA_CASES, ids=lambda c: _case_id((torch.float16,) + c))
def test_tma_path_matches_oracle(case, tma_path, device):
    B, H, Tq, Tk, D, causal, layout = case
    q, k, v = _make_qkv(B, H, Tq, Tk, D, torch.float16, layout, device)
    _check_against_oracle(q, k, v, causal, D ** -0.5)
    # Forward: q, k, v, o; backward: q, k, v, do, dq, dk, dv.
    assert len(tma_path) == 11, tma_path


@pytest.mark.parametrize("Tq,Tk,causal,p", [(33, 65, True, 0.3), (97, 97, False, 0.1)],
                         ids=["33x65-causal", "97-full"])
def test_tma_path_dropout_matches_reference(Tq, Tk, causal, p, tma_path, device):
    q, k, v = _make_qkv(1, 2, Tq, Tk, 32, torch.float16, "contiguous", device)
    _check_against_oracle(q, k, v, causal, 32 ** -0.5, dropout_p=p, seed=2 ** 33 + 5)
    assert tma_path


def test_tma_path_backward_is_deterministic(tma_path, device):
    q, k, v = _make_qkv(1, 2, 97, 97, 32, torch.float16, "qkv", device)
    o, lse = attention_fwd(q, k, v, True, 32 ** -0.5, 0.2, 5)
    do = torch.randn_like(o)
    first = attention_bwd(do, q, k, v, o, lse, True, 32 ** -0.5, 0.2, 5)
    second = attention_bwd(do, q, k, v, o, lse, True, 32 ** -0.5, 0.2, 5)
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert torch.equal(a, b), f"{name} differs between two identical backward calls"
    assert tma_path


def test_tma_and_pointer_paths_agree(monkeypatch, device):
    """Same kernels, same loop order: the two load paths give identical results."""
    if device == "cuda":
        pytest.skip("on a GPU the arch picks the path")
    q, k, v = _make_qkv(1, 2, 97, 128, 64, torch.float16, "kv", device)
    runs = []
    for tma in (False, True):
        monkeypatch.setattr(attention_kernels, "_INTERPRETER_TMA", tma)
        o, lse = attention_fwd(q, k, v, True, 0.125, 0.1, 3)
        grads = attention_bwd(torch.ones_like(o), q, k, v, o, lse, True, 0.125, 0.1, 3)
        runs.append((o, lse) + grads)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), *runs):
        assert torch.equal(a, b), f"{name} differs between the pointer and the descriptor path"


# --------------------------------------------------------------------------------------------
# Left-padded batches (generation): keys j < key_padding_start[b] masked in the forward
# --------------------------------------------------------------------------------------------

def _padded_reference(q, k, v, causal, scale, pads):
    """(o, lse) with keys j < pads[b] masked; rows left without keys give o = 0, lse = -inf."""
    Tq, Tk = q.shape[2], k.shape[2]
    allowed = torch.arange(Tk, device=q.device)[None, None, None, :] >= pads.long()[:, None, None, None]
    if causal:
        allowed = allowed & reference.causal_mask(Tq, Tk, q.device)
    s = ((q @ k.transpose(-1, -2)) * scale).float().masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0).to(q.dtype)
    return p @ v, torch.logsumexp(s, dim=-1)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")  # lse = -inf
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("Tq,Tk,causal", [(40, 40, True), (1, 97, True), (33, 70, False)],
                         ids=["prefill", "decode", "full"])
def test_key_padding_start(Tq, Tk, causal, tma, monkeypatch, device):
    if device == "cpu":
        monkeypatch.setattr(attention_kernels, "_INTERPRETER_TMA", tma)
    elif tma != (torch.cuda.get_device_capability()[0] >= 9):
        pytest.skip("on a GPU the arch picks the path")
    q, k, v = _make_qkv(4, 2, Tq, Tk, 32, torch.float16, "contiguous", device)
    # No padding, a few keys, more than a block, every key: whole rows and batches left empty.
    pads = torch.tensor([0, 5, 37, Tk], dtype=torch.int32, device=device)
    o, lse = attention_fwd(q, k, v, causal, 32 ** -0.5, key_padding_start=pads)
    q32, k32, v32 = (t.float() for t in (q, k, v))
    oracle, lse_ref = _padded_reference(q32, k32, v32, causal, 32 ** -0.5, pads)
    plain, _ = _padded_reference(q, k, v, causal, 32 ** -0.5, pads)
    assert_2x_rule("o", o, plain, oracle, torch.float16)
    empty = torch.isinf(lse_ref)
    assert empty.any() and not empty.all()
    assert torch.equal(o[empty], torch.zeros_like(o[empty]))
    assert torch.equal(lse[empty], lse_ref[empty])
    torch.testing.assert_close(lse[~empty], lse_ref[~empty], rtol=1e-5, atol=1e-5)


def test_key_padding_start_zero_is_no_padding(device):
    q, k, v = _make_qkv(2, 2, 33, 33, 32, torch.float32, "contiguous", device)
    o1, l1 = attention_fwd(q, k, v, True, 0.2)
    o2, l2 = attention_fwd(q, k, v, True, 0.2, key_padding_start=torch.zeros(2, dtype=torch.int32, device=device))
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


def test_key_padding_start_rejects_bad_tensors(device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match=r"key_padding_start must be an int32 tensor of shape \(1,\)"):
        attention_fwd(q, k, v, True, 0.1, key_padding_start=torch.zeros(1, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"key_padding_start must be an int32 tensor of shape \(1,\)"):
        attention_fwd(q, k, v, True, 0.1, key_padding_start=torch.zeros(2, dtype=torch.int32, device=device))


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

def _ok(device, dtype=torch.float32, Tq=8, Tk=8, D=32):
    return (torch.randn(1, 2, Tq, D, dtype=dtype, device=device),
            torch.randn(1, 2, Tk, D, dtype=dtype, device=device),
            torch.randn(1, 2, Tk, D, dtype=dtype, device=device))


def test_rejects_wrong_ndim(device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention_fwd(q[0], k, v, True, 0.1)
    with pytest.raises(ValueError, match="v must be 4-D"):
        attention_fwd(q, k, v[0], True, 0.1)


def test_rejects_batch_head_mismatch(device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="batch/head mismatch"):
        attention_fwd(q, k[:, :1], v[:, :1], True, 0.1)
    with pytest.raises(ValueError, match="batch/head mismatch"):
        attention_fwd(q, k, torch.cat([v, v]), True, 0.1)


def test_rejects_head_dim_mismatch(device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="head-dim mismatch"):
        attention_fwd(q, k[..., :16], v, True, 0.1)


def test_rejects_tq_greater_than_tk(device):
    q, k, v = _ok(device, Tq=9, Tk=8)
    with pytest.raises(ValueError, match="Tq=9 > Tk=8"):
        attention_fwd(q, k, v, True, 0.1)


def test_rejects_dtype_mismatch(device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="k has dtype torch.float16"):
        attention_fwd(q, k.half(), v, True, 0.1)
    with pytest.raises(ValueError, match="q has dtype torch.float64"):
        attention_fwd(q.double(), k.double(), v.double(), True, 0.1)


def test_rejects_device_mismatch(device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="v is on meta"):
        attention_fwd(q, k, v.to("meta"), True, 0.1)


@pytest.mark.parametrize("D", [8, 48, 256])
def test_rejects_unsupported_head_dim(D, device):
    q, k, v = _ok(device, D=D)
    with pytest.raises(ValueError, match=r"q has head dim .*\(16, 32, 64, 128\)"):
        attention_fwd(q, k, v, True, 0.1)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_rejects_bad_dropout(p, device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        attention_fwd(q, k, v, True, 0.1, dropout_p=p)
    with pytest.raises(ValueError, match="dropout_p must be in"):
        dropout_mask(1, 1, 4, 4, p, 0, device)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_rejects_bad_scale(scale, device):
    q, k, v = _ok(device)
    with pytest.raises(ValueError, match="scale must be a finite positive"):
        attention_fwd(q, k, v, True, scale)


def test_rejects_grid_overflow(device):
    q = torch.randn(65536, 1, 1, 16, device=device)
    with pytest.raises(ValueError, match="B=65536, nh=1; each must be <= 65535"):
        attention_fwd(q, q, q, True, 0.1)


def test_backward_rejects_bad_saved_tensors(device):
    q, k, v = _ok(device)
    o, lse = attention_fwd(q, k, v, True, 0.1)
    with pytest.raises(ValueError, match="do must have q's shape"):
        attention_bwd(o[:, :1], q, k, v, o, lse, True, 0.1)
    with pytest.raises(ValueError, match="lse must be fp32"):
        attention_bwd(o, q, k, v, o, lse.half(), True, 0.1)
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention_bwd(o, q[0], k, v, o, lse, True, 0.1)


# --------------------------------------------------------------------------------------------
# GPU only: bf16 (no bf16 tl.dot in the interpreter) and long sequences.
# --------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("Tq,Tk,D,causal,layout,p", [
    (1, 1, 64, True, "contiguous", 0.0),
    (97, 97, 64, True, "qkv", 0.0),
    (257, 257, 128, False, "contiguous", 0.0),
    (17, 257, 32, True, "kv", 0.0),
    (1024, 1024, 64, True, "qkv", 0.0),
    (128, 128, 16, True, "qkv", 0.1),
    (257, 257, 64, True, "qkv", 0.1),
])
def test_attention_bf16(Tq, Tk, D, causal, layout, p, device):
    q, k, v = _make_qkv(2, 3, Tq, Tk, D, torch.bfloat16, layout, device)
    _check_against_oracle(q, k, v, causal, D ** -0.5, dropout_p=p, seed=31)


@pytest.mark.gpu
def test_attention_more_than_65535_heads(device):
    # B * nh = 65792: the grid carries heads and batch on separate axes.
    q, k, v = _make_qkv(257, 256, 16, 16, 16, torch.float16, "contiguous", device)
    _check_against_oracle(q, k, v, True, 0.25)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [4096, 8192])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_long_sequences(T, dtype, device):
    q, k, v = _make_qkv(1, 2, T, T, 64, dtype, "qkv", device)
    _check_against_oracle(q, k, v, True, 64 ** -0.5)
