"""torch.compile(fullgraph=True) of the model: the ops' fake functions and autograd let Dynamo
trace through without a graph break, on every backend that runs here."""
import pytest
import torch

import fastgpt
from fastgpt import GPT, GPTConfig

CFG = dict(block_size=16, vocab_size=29, n_layer=2, n_head=2, n_embd=32)


def _compiled_matches_eager(backend_spec, compiler, dropout=0.0):
    model = GPT(GPTConfig(**CFG, dropout=dropout))
    idx = torch.randint(0, CFG["vocab_size"], (2, 16))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    with fastgpt.use_backend(**backend_spec):
        logits, loss = compiled(idx, idx)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        e_logits, e_loss = model(idx, idx)
        e_loss.backward()
    torch.testing.assert_close(loss, e_loss, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)


def test_fullgraph_reference_aot_eager():
    _compiled_matches_eager({}, "aot_eager")


def test_fullgraph_extension_op_aot_eager():
    """The C++ ops (fake functions, autograd) inside a full graph."""
    _compiled_matches_eager({"qkv_projection": "cuda", "mlp": "cuda"}, "aot_eager")


@pytest.mark.slow
def test_fullgraph_inductor():
    _compiled_matches_eager({"qkv_projection": "cuda", "mlp": "cuda"}, "inductor")
