"""fastgpt.ops.attention on the triton backend through the public op: registration, autograd,
dropout seeding, the model (dropout on), KV-cache generation and torch.compile(fullgraph=True)."""
import pytest
import torch

import fastgpt
from fastgpt import BackendError, backend_for, ops, reference, use_backend
from helpers import DEVICE, check_2x_rule, randn

pytest.importorskip("triton")


def _qkv(B, H, Tq, Tk, D, dtype):
    return [randn(B, H, T, D, dtype=dtype).requires_grad_() for T in (Tq, Tk, Tk)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Tq,Tk,causal", [(33, 33, True), (5, 40, True), (17, 17, False)])
def test_op_matches_oracle(dtype, Tq, Tk, causal):
    def run(qkv, kernel):
        if kernel:
            with fastgpt.use_backend(attention="triton"):
                return ops.attention(*qkv, causal=causal)
        return reference.attention_math(*qkv, causal=causal)

    check_2x_rule(run, _qkv(1, 2, Tq, Tk, 32, torch.float32), randn(1, 2, Tq, 32), dtype, ("o", "dq", "dk", "dv"))


def test_dropout_is_seeded_by_torch_and_differs_between_calls():
    q, k, v = _qkv(1, 2, 24, 24, 16, torch.float32)
    with fastgpt.use_backend(attention="triton"):
        torch.manual_seed(0)
        a = ops.attention(q, k, v, dropout_p=0.3)
        b = ops.attention(q, k, v, dropout_p=0.3)
        torch.manual_seed(0)
        c = ops.attention(q, k, v, dropout_p=0.3)
    assert torch.equal(a, c) and not torch.equal(a, b)


def _model(dropout=0.0):
    cfg = fastgpt.GPTConfig(block_size=24, vocab_size=19, n_layer=2, n_head=2, n_embd=32, dropout=dropout)
    return fastgpt.GPT(cfg).to(DEVICE)


def test_model_with_dropout_runs_the_kernel(monkeypatch):
    from fastgpt.kernels import attention as kern

    calls = []
    for name in ("attention_fwd", "attention_bwd"):
        fn = getattr(kern, name)
        monkeypatch.setattr(kern, name, lambda *a, _fn=fn, _n=name, **kw: (calls.append((_n, a[-2])), _fn(*a, **kw))[1])
    model, idx = _model(dropout=0.2), torch.randint(0, 19, (2, 24), device=DEVICE)
    with fastgpt.use_backend(attention="triton"):
        model(idx, idx)[1].backward()
    assert {c[0] for c in calls} == {"attention_fwd", "attention_bwd"}
    assert all(p == 0.2 for _, p in calls), calls  # dropout stayed inside the fused kernel


def test_model_matches_reference_without_dropout():
    model, idx = _model(), torch.randint(0, 19, (2, 24), device=DEVICE)
    with fastgpt.use_backend(attention="triton"):
        loss = model(idx, idx)[1]
    with fastgpt.use_backend("reference"):
        ref = model(idx, idx)[1]
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_generate_with_cache_on_the_kernel_equals_without():
    model = _model().eval()
    idx = torch.randint(0, 19, (1, 4), device=DEVICE)
    with fastgpt.use_backend(attention="triton"):
        torch.manual_seed(3)
        cached = model.generate(idx, 10, top_k=5)
        torch.manual_seed(3)
        plain = model.generate(idx, 10, top_k=5, use_cache=False)
    assert torch.equal(cached, plain)


def test_compile_fullgraph_with_the_kernel():
    model, idx = _model(dropout=0.1), torch.randint(0, 19, (2, 24), device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with fastgpt.use_backend(attention="triton"):
        loss = compiled(idx, idx)[1]
        loss.backward()
    assert torch.isfinite(loss)


def test_key_padding_is_refused_by_the_kernel_and_runs_on_reference():
    """The Triton kernel has no key padding yet: forced, it refuses (never ignores the mask); auto
    runs such calls on the reference path."""
    q = torch.randn(2, 2, 8, 16, device=DEVICE)
    start = torch.tensor([0, 3], device=DEVICE)
    with use_backend(attention="triton"):
        with pytest.raises(BackendError, match="no key padding mask"):
            ops.attention(q, q, q, key_start=start)
        assert backend_for("attention", q, q, q) == "triton"
    assert backend_for("attention", q, q, q, True, 0.0, None, start) == "reference"
    torch.testing.assert_close(ops.attention(q, q, q, key_start=start), reference.attention(q, q, q, True, 0.0, None, start))
