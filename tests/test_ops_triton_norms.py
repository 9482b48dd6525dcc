"""fastgpt.ops.layer_norm and bias_gelu on the triton backend: the kernels through the public
ops (torch.library registration, fake functions, autograd), inside the model and under
torch.compile(fullgraph=True)."""
import copy

import pytest
import torch

import fastgpt
from fastgpt import ops, reference
from helpers import DEVICE, assert_same_grads, check_2x_rule, randn

pytest.importorskip("triton")


def _through(op, **backend):
    """run(inputs, kernel) for check_2x_rule: ``op`` on the triton backend or the reference."""
    def run(xs, kernel):
        with fastgpt.use_backend(**{name: "triton" if kernel else "reference" for name in backend}):
            return op(*xs)
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_op(dtype, affine):
    x = randn(3, 17, 2 * 96, scale=2, shift=0.5)[..., ::2]  # (3, 17, 96), strided
    w, b = (randn(96), randn(96)) if affine else (None, None)
    check_2x_rule(_through(lambda x, w, b: ops.layer_norm(x, w, b), layer_norm=1), (x, w, b), randn(3, 17, 96), dtype,
                  ("y", "dx", "dweight", "dbias"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_op(dtype, approximate, with_bias):
    x, b = randn(2, 9, 300, scale=3), randn(300) if with_bias else None
    check_2x_rule(_through(lambda x, b: ops.bias_gelu(x, b, approximate), bias_gelu=1), (x, b), randn(2, 9, 300), dtype,
                  ("y", "dx", "dbias"))


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
        assert rep["layer_norm"] == rep["bias_gelu"] == rep["linear_bias_gelu"] == rep["mlp"] == "triton"


def _model():
    return fastgpt.GPT(fastgpt.GPTConfig(block_size=16, vocab_size=23, n_layer=1, n_head=2, n_embd=32)).to(DEVICE)


def test_model_uses_the_kernels_and_matches_reference():
    model, idx = _model(), torch.randint(0, 23, (2, 16), device=DEVICE)
    with fastgpt.use_backend(layer_norm="triton", mlp="triton"):
        loss = model(idx, idx)[1]
    loss.backward()
    ref_model = copy.deepcopy(model)
    ref_model.zero_grad()
    with fastgpt.use_backend("reference"):
        ref = ref_model(idx, idx)[1]
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert_same_grads(model, ref_model, rtol=1e-4, atol=1e-5)


def test_kernels_called(monkeypatch):
    """The triton backend really launches the kernels (no silent reference path)."""
    from fastgpt.kernels import bias_gelu as bg
    from fastgpt.kernels import layer_norm as ln

    calls = []
    for mod, names in ((ln, ("layer_norm_fwd", "layer_norm_bwd")), (bg, ("bias_gelu_fwd", "bias_gelu_bwd"))):
        for name in names:
            fn = getattr(mod, name)
            monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
    model, idx = _model(), torch.randint(0, 23, (1, 8), device=DEVICE)
    with fastgpt.use_backend(layer_norm="triton", mlp="triton"):
        model(idx, idx)[1].backward()
    assert set(calls) == {"layer_norm_fwd", "layer_norm_bwd", "bias_gelu_fwd", "bias_gelu_bwd"}


def test_compile_fullgraph_with_the_kernels():
    model, idx = _model(), torch.randint(0, 23, (2, 16), device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with fastgpt.use_backend(layer_norm="triton", mlp="triton"):
        loss = compiled(idx, idx)[1]
        loss.backward()
        eager = model(idx, idx)[1]
    torch.testing.assert_close(loss, eager)


def test_width_limit_is_refused_before_the_kernel():
    from fastgpt.kernels.limits import LAYER_NORM_MAX_N

    x = torch.randn(1, LAYER_NORM_MAX_N + 1)
    with fastgpt.use_backend(layer_norm="triton"), pytest.raises(fastgpt.BackendError, match="widths up to"):
        ops.layer_norm(x, None, None)
