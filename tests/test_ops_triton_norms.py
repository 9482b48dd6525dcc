"""fastgpt.ops.layer_norm and bias_gelu on the triton backend: the kernels through the public
ops (torch.library registration, fake functions, autograd), inside the model and under
torch.compile(fullgraph=True)."""
import pytest
import torch

import fastgpt
from conftest import DEVICE
from fastgpt import ops, reference
from tolerances import assert_2x_rule

pytest.importorskip("triton")


def _grads(fn, inputs, dy):
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    y = fn()
    return y, torch.autograd.grad(y, leaves, dy.to(y.dtype))


def _leaf(t, dtype):
    return None if t is None else t.detach().to(DEVICE, dtype).requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_op(dtype, affine):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 17, 2 * 96, generator=g)[..., ::2] * 2 + 0.5  # (3, 17, 96), strided
    w0 = torch.randn(96, generator=g) if affine else None
    b0 = torch.randn(96, generator=g) if affine else None
    dy = torch.randn(3, 17, 96, generator=g).to(DEVICE)
    results = {}
    for key, prec, backend in (("out", dtype, "triton"), ("plain", dtype, "reference"), ("oracle", torch.float32, "reference")):
        x, w, b = _leaf(x0, prec), _leaf(w0, prec), _leaf(b0, prec)
        with fastgpt.use_backend(layer_norm=backend):
            results[key] = _grads(lambda: ops.layer_norm(x, w, b), (x, w, b), dy)
    (y, gs), (py, pgs), (oy, ogs) = results["out"], results["plain"], results["oracle"]
    assert y.dtype == dtype
    assert_2x_rule("y", y, py, oy, dtype)
    for name, a, p, o in zip(["dx", "dweight", "dbias"], gs, pgs, ogs):
        assert_2x_rule(name, a, p, o, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_op(dtype, approximate, with_bias):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 9, 300, generator=g) * 3
    b0 = torch.randn(300, generator=g) if with_bias else None
    dy = torch.randn(2, 9, 300, generator=g).to(DEVICE)
    results = {}
    for key, prec, backend in (("out", dtype, "triton"), ("plain", dtype, "reference"), ("oracle", torch.float32, "reference")):
        x, b = _leaf(x0, prec), _leaf(b0, prec)
        with fastgpt.use_backend(bias_gelu=backend):
            results[key] = _grads(lambda: ops.bias_gelu(x, b, approximate), (x, b), dy)
    (y, gs), (py, pgs), (oy, ogs) = results["out"], results["plain"], results["oracle"]
    assert_2x_rule("y", y, py, oy, dtype)
    for name, a, p, o in zip(["dx", "dbias"], gs, pgs, ogs):
        assert_2x_rule(name, a, p, o, dtype)


def test_fp32_parameters_with_half_activations():
    """Under autocast the activations are low precision and the parameters fp32."""
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.float16)
    w, b = torch.randn(64, device=DEVICE), torch.randn(64, device=DEVICE)
    with fastgpt.use_backend("triton"):
        y = ops.layer_norm(x, w, b)
        z = ops.bias_gelu(x, b)
    assert y.dtype == z.dtype == torch.float16
    torch.testing.assert_close(y.float(), reference.layer_norm(x.float(), w.half().float(), b.half().float()), atol=2e-2, rtol=1e-2)


def test_report_on_cuda_tensors_picks_triton():
    if DEVICE != "cuda":
        assert fastgpt.report("cpu")["layer_norm"] == "reference"  # auto never picks the interpreter
    else:
        rep = fastgpt.report("cuda", torch.bfloat16)
        assert rep["layer_norm"] == rep["bias_gelu"] == "triton"


def _model():
    torch.manual_seed(0)
    return fastgpt.GPT(fastgpt.GPTConfig(block_size=16, vocab_size=23, n_layer=1, n_head=2, n_embd=32)).to(DEVICE)


def test_model_uses_the_kernels_and_matches_reference():
    model, idx = _model(), torch.randint(0, 23, (2, 16), device=DEVICE)
    with fastgpt.use_backend(layer_norm="triton", bias_gelu="triton"):
        loss = model(idx, idx)[1]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with fastgpt.use_backend("reference"):
        ref = model(idx, idx)[1]
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_kernels_called(monkeypatch):
    """The triton backend really launches the kernels (no silent reference path)."""
    from fastgpt.kernels import bias_gelu as bg, layer_norm as ln

    calls = []
    for mod, names in ((ln, ("layer_norm_fwd", "layer_norm_bwd")), (bg, ("bias_gelu_fwd", "bias_gelu_bwd"))):
        for name in names:
            fn = getattr(mod, name)
            monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
    model, idx = _model(), torch.randint(0, 23, (1, 8), device=DEVICE)
    with fastgpt.use_backend(layer_norm="triton", bias_gelu="triton"):
        model(idx, idx)[1].backward()
    assert set(calls) == {"layer_norm_fwd", "layer_norm_bwd", "bias_gelu_fwd", "bias_gelu_bwd"}


def test_compile_fullgraph_with_the_kernels():
    model, idx = _model(), torch.randint(0, 23, (2, 16), device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with fastgpt.use_backend(layer_norm="triton", bias_gelu="triton"):
        loss = compiled(idx, idx)[1]
        loss.backward()
        eager = model(idx, idx)[1]
    torch.testing.assert_close(loss, eager)


def test_width_limit_matches_the_kernel():
    from fastgpt.kernels.layer_norm import MAX_N
    from fastgpt.ops.layer_norm import MAX_TRITON_WIDTH

    assert MAX_TRITON_WIDTH == MAX_N
    x = torch.randn(1, MAX_N + 1)
    with fastgpt.use_backend(layer_norm="triton"), pytest.raises(fastgpt.BackendError, match="widths up to"):
        ops.layer_norm(x, None, None)
