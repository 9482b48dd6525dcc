"""The reference attention's two CPU routes (explicit scores for short keys, SDPA beyond) agree
with the spelled-out definition, values and every gradient."""
import pytest
import torch

from fastgpt import reference


def _grads(fn, q, k, v, g):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(g)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (5, 5), (3, 17), (64, 64), (128, 128), (1, 128), (129, 129), (7, 200)])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_routes_match_the_definition(Tq, Tk, causal, scale):
    B, H, D = 2, 3, 16
    q = torch.randn(B, H, Tq, D, dtype=torch.float64)
    k, v = torch.randn(2, B, H, Tk, D, dtype=torch.float64)
    g = torch.randn(B, H, Tq, D, dtype=torch.float64)
    want = _grads(lambda a, b, c: reference.attention_math(a, b, c, causal, scale), q, k, v, g)
    got = _grads(lambda a, b, c: reference.attention(a, b, c, causal, 0.0, scale), q, k, v, g)
    for name, w, x in zip(("out", "dq", "dk", "dv"), want, got):
        torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("Tk", [9, 200])
def test_attention_value_head_dim_may_differ(Tk):
    """v's head dim need not be q's (as in SDPA), on both routes."""
    q, k = torch.randn(2, 2, 3, Tk, 16, dtype=torch.float64)
    v = torch.randn(2, 3, Tk, 8, dtype=torch.float64)
    g = torch.randn(2, 3, Tk, 8, dtype=torch.float64)
    want = _grads(lambda a, b, c: reference.attention_math(a, b, c, True), q, k, v, g)
    got = _grads(lambda a, b, c: reference.attention(a, b, c, True), q, k, v, g)
    for name, w, x in zip(("out", "dq", "dk", "dv"), want, got):
        torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-10, msg=name)


def test_short_route_is_used_up_to_small_t_and_equals_sdpa(monkeypatch):
    """Both routes give the same fp32 result on the same input (and SMALL_T really switches)."""
    q, k, v = torch.randn(3, 4, 2, reference.SMALL_T, 32)
    calls = []
    real = reference._attention_small
    monkeypatch.setattr(reference, "_attention_small", lambda *a: calls.append(1) or real(*a))
    short = reference.attention(q, k, v)
    assert calls == [1]
    reference.attention(*(t.bfloat16() for t in (q, k, v)))  # 16-bit inputs keep SDPA's fp32 softmax
    reference.attention(q, k, v, dropout_p=0.1)  # dropout: SDPA's own RNG
    reference.attention(*(torch.randn(1, 1, reference.SMALL_T + 1, 8) for _ in range(3)))
    assert calls == [1]
    monkeypatch.setattr(reference, "SMALL_T", 0)
    sdpa = reference.attention(q, k, v)
    assert calls == [1]
    torch.testing.assert_close(short, sdpa, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq,Tk", [(9, 9), (3, 9), (1, 200), (130, 130)])
def test_key_padding_equals_each_row_alone(Tq, Tk, causal):
    """key_start (left padding): each row equals attention over its own keys only, padding queries
    output 0, and every gradient is that of the unpadded rows (0 on the padding)."""
    B, H, D = 3, 2, 16
    starts = [0, 4, Tk - 1]
    q = torch.randn(B, H, Tq, D, dtype=torch.float64)
    k, v = torch.randn(2, B, H, Tk, D, dtype=torch.float64)
    g = torch.randn(B, H, Tq, D, dtype=torch.float64)
    key_start = torch.tensor(starts)
    got = _grads(lambda a, b, c: reference.attention(a, b, c, causal, 0.0, None, key_start), q, k, v, g)
    oracle = _grads(lambda a, b, c: reference.attention_math(a, b, c, causal, key_start=key_start), q, k, v, g)
    for name, w, x in zip(("out", "dq", "dk", "dv"), oracle, got):
        torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-10, msg=name)
    out, dq, dk, dv = got
    for b, s in enumerate(starts):
        first_q = max(0, s - (Tk - Tq)) if causal else 0  # the queries before it see no key
        assert torch.all(out[b, :, :first_q] == 0) and torch.all(dq[b, :, :first_q] == 0)
        assert torch.all(dk[b, :, :s] == 0) and torch.all(dv[b, :, :s] == 0)
        if first_q < Tq:  # the rest: attention over the row's own keys, the causal mask still bottom-right
            rows = slice(first_q, None)
            want = _grads(lambda a, bb, c: reference.attention_math(a, bb, c, causal), q[b : b + 1, :, rows], k[b : b + 1, :, s:],
                          v[b : b + 1, :, s:], g[b : b + 1, :, rows])
            for name, w, x in zip(("out", "dq", "dk", "dv"), want, (out[b : b + 1, :, rows], dq[b : b + 1, :, rows], dk[b : b + 1, :, s:],
                                                                    dv[b : b + 1, :, s:])):
                torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-10, msg=f"row {b} {name}")


def test_key_padding_without_it_is_unchanged():
    q, k, v = torch.randn(3, 2, 2, 9, 16, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(reference.attention(q, k, v, True, 0.0, None, zero), reference.attention(q, k, v, True), rtol=1e-12, atol=1e-12)
