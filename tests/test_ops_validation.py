"""Bad input to the public ops gets an error naming the argument and what was expected."""
import pytest
import torch

import fastgpt
from fastgpt import ops, use_backend

x = torch.randn(2, 3, 8)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ops.layer_norm(x.long(), None, None), TypeError, "x must be a floating-point tensor"),
    (lambda: ops.layer_norm(x, torch.ones(7), None), ValueError, r"weight must have shape \(8,\)"),
    (lambda: ops.layer_norm(x, None, torch.ones(8)[None]), ValueError, r"bias must have shape \(8,\)"),
    (lambda: ops.layer_norm([1.0], None, None), TypeError, "x must be a torch.Tensor"),
    (lambda: ops.bias_gelu(x, torch.ones(8), approximate="sigmoid"), ValueError, "approximate"),
    (lambda: ops.bias_gelu(x, torch.ones(3)), ValueError, r"bias must have shape \(8,\)"),
    (lambda: ops.attention(x, x, x), ValueError, "q must be 4-d"),
    (lambda: ops.attention(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)), ValueError, "Tq <= Tk"),
    (lambda: ops.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8)), ValueError, "k and v must be"),
    (lambda: ops.attention(*[torch.randn(1, 2, 4, 8)] * 3, dropout_p=1.0), ValueError, "dropout_p"),
    (lambda: ops.attention(*[torch.randn(1, 2, 4, 8)] * 3, scale=-1.0), ValueError, "scale"),
    (lambda: ops.attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8).half(), torch.randn(1, 2, 4, 8)), TypeError, "share a dtype"),
    (lambda: ops.attention(*[torch.randn(2, 2, 4, 8)] * 3, key_start=torch.zeros(2)), TypeError, "key_start must be an int32/int64 tensor"),
    (lambda: ops.attention(*[torch.randn(2, 2, 4, 8)] * 3, key_start=torch.zeros(3, dtype=torch.long)), ValueError,
     r"key_start must have shape \(2,\)"),
    (lambda: ops.qkv_projection(x, torch.randn(24, 8), None, 3), ValueError, "n_head must be a positive int dividing C = 8"),
    (lambda: ops.qkv_projection(x, torch.randn(8, 8), None, 2), ValueError, r"weight must have shape \(24, 8\)"),
    (lambda: ops.qkv_projection(x[0], torch.randn(24, 8), None, 2), ValueError, "x must be 3-d"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- edge inputs: the same result (or the same error) on every backend of every op

# The backends each op has on this machine's CPU tensors: reference, Triton through the
# interpreter (conftest.py switches it on without a GPU), the extension's C++ twin for cuda.
BACKENDS = {"layer_norm": ("reference", "triton"), "bias_gelu": ("reference", "triton"),
            "attention": ("reference", "triton"), "qkv_projection": ("reference", "cuda"),
            "linear_bias_gelu": ("reference", "triton", "cuda"), "mlp": ("reference", "triton", "cuda")}


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


# op -> case -> (inputs maker, None when the call works, else (exception type, message regex))
EDGE = {
    "layer_norm": {
        "T=0": (lambda: (_t(2, 0, 16), _t(16), _t(16)), None),
        "B=0": (lambda: (_t(0, 3, 16), _t(16), _t(16)), None),
        "1-d x": (lambda: (_t(16), _t(16), None), None),
        "fp16 weight, fp32 x": (lambda: (_t(2, 3, 16), _t(16, dtype=torch.float16), _t(16)), None),
        "fp32 weight, fp16 x": (lambda: (_t(2, 3, 16, dtype=torch.float16), _t(16), _t(16)), None),
        "C=0": (lambda: (_t(2, 3, 0), _t(0), _t(0)), (ValueError, r"layer_norm: x's last dim \(C\) must be at least 1, got shape \(2, 3, 0\)")),
        "int x": (lambda: (torch.ones(2, 3, 16, dtype=torch.int64), None, None), (TypeError, "x must be a floating-point tensor")),
        "eps < 0": (lambda: (_t(2, 3, 16), None, None, -1.0), (ValueError, "eps must be a finite number >= 0, got -1.0")),
        "eps str": (lambda: (_t(2, 3, 16), None, None, "1e-5"), (TypeError, "eps must be a finite number >= 0, got '1e-5'")),
    },
    "bias_gelu": {
        "T=0": (lambda: (_t(2, 0, 64), _t(64)), None),
        "B=0": (lambda: (_t(0, 3, 64), _t(64)), None),
        "no bias": (lambda: (_t(2, 3, 64), None), None),
        "fp16 bias, fp32 x": (lambda: (_t(2, 3, 64), _t(64, dtype=torch.float16)), None),
        "C=0": (lambda: (_t(2, 3, 0), _t(0)), (ValueError, r"bias_gelu: x's last dim \(N\) must be at least 1, got shape \(2, 3, 0\)")),
        "approximate": (lambda: (_t(2, 3, 64), None, None), (ValueError, "approximate must be 'none'")),
    },
    "linear_bias_gelu": {
        "T=0": (lambda: (_t(2, 0, 16), _t(64, 16), _t(64)), None),
        "B=0": (lambda: (_t(0, 3, 16), _t(64, 16), _t(64)), None),
        "no bias": (lambda: (_t(2, 3, 16), _t(64, 16), None), None),
        "fp16 weight, fp32 x": (lambda: (_t(2, 3, 16), _t(64, 16, dtype=torch.float16), _t(64)), None),
        "K=0": (lambda: (_t(2, 3, 0), _t(64, 0), _t(64)), (ValueError, r"linear_bias_gelu: x's last dim \(K\) must be at least 1")),
        "N=0": (lambda: (_t(2, 3, 16), _t(0, 16), _t(0)), (ValueError, r"linear_bias_gelu: weight must be \(N, 16\) with N >= 1")),
        "approximate": (lambda: (_t(2, 3, 16), _t(64, 16), None, None), (ValueError, "approximate must be 'none'")),
    },
    "mlp": {
        "T=0": (lambda: (_t(2, 0, 16), _t(64, 16), _t(64), _t(16, 64), _t(16)), None),
        "B=0": (lambda: (_t(0, 3, 16), _t(64, 16), _t(64), _t(16, 64), _t(16)), None),
        "no biases": (lambda: (_t(2, 3, 16), _t(64, 16), None, _t(16, 64), None), None),
        "fp16 weights, fp32 x": (lambda: (_t(2, 3, 16), _t(64, 16, dtype=torch.float16), _t(64), _t(16, 64, dtype=torch.float16), None), None),
        "C=0": (lambda: (_t(2, 3, 0), _t(64, 0), _t(64), _t(16, 64), None), (ValueError, r"mlp: x's last dim \(C\) must be at least 1")),
        "N=0": (lambda: (_t(2, 3, 16), _t(0, 16), _t(0), _t(16, 0), None), (ValueError, r"mlp: fc_weight must be \(N, 16\) with N >= 1")),
        "C_out=0": (lambda: (_t(2, 3, 16), _t(64, 16), None, _t(0, 64), None), (ValueError, r"mlp: proj_weight must be \(C_out, 64\) with C_out >= 1")),
        "approximate": (lambda: (_t(2, 3, 16), _t(64, 16), None, _t(16, 64), None, None), (ValueError, "approximate must be 'none'")),
    },
    "attention": {
        "B=0": (lambda: (_t(0, 2, 4, 16),) * 3, None),
        "H=0": (lambda: (_t(1, 0, 4, 16),) * 3, None),
        "T=0": (lambda: (_t(2, 2, 0, 16),) * 3, None),
        "Tq=0 < Tk": (lambda: (_t(1, 2, 0, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16)), None),
        "Tq < Tk": (lambda: (_t(1, 2, 3, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16)), None),
        "D=0": (lambda: (_t(1, 2, 4, 0),) * 3, (ValueError, r"attention: q's last dim \(D\) must be at least 1, got shape \(1, 2, 4, 0\)")),
        "mixed dtypes": (lambda: (_t(1, 2, 4, 16), _t(1, 2, 4, 16, dtype=torch.float16), _t(1, 2, 4, 16)), (TypeError, "share a dtype")),
        "causal str": (lambda: (*(_t(1, 2, 4, 16),) * 3, "no"), (TypeError, "causal must be True or False, got 'no'")),
        "dropout_p str": (lambda: (*(_t(1, 2, 4, 16),) * 3, True, "0.1"), (TypeError, r"dropout_p must be a number in \[0, 1\)")),
        "scale bool": (lambda: (*(_t(1, 2, 4, 16),) * 3, True, 0.0, True), (TypeError, "scale must be a positive finite number")),
    },
    "qkv_projection": {
        "T=0": (lambda: (_t(2, 0, 16), _t(48, 16), _t(48), 2), None),
        "B=0": (lambda: (_t(0, 3, 16), _t(48, 16), _t(48), 2), None),
        "fp16 weight, fp32 x": (lambda: (_t(2, 3, 16), _t(48, 16, dtype=torch.float16), _t(48), 2), None),
        "fp32 weight, fp16 x": (lambda: (_t(2, 3, 16, dtype=torch.float16), _t(48, 16), None, 2), None),
        "C=0": (lambda: (_t(2, 3, 0), _t(0, 0), _t(0), 1), (ValueError, r"qkv_projection: x's last dim \(C\) must be at least 1")),
        "n_head bool": (lambda: (_t(2, 3, 16), _t(48, 16), None, True), (ValueError, "n_head must be a positive int")),
    },
}
CASES = [(op, case) for op, cases in EDGE.items() for case in cases]


def _call(op, backend, args):
    """The op's outputs and the gradients of every floating input (None where no gradient flows)."""
    leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    with use_backend(**{op: backend}):
        out = getattr(ops, op)(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
        wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt)
    return outs, grads


@pytest.mark.parametrize("op,case", CASES, ids=[f"{op}-{case}" for op, case in CASES])
def test_edge_inputs_are_the_same_on_every_backend(op, case):
    make, error = EDGE[op][case]
    args = make()
    results = {}
    for backend in BACKENDS[op]:
        if error is not None:
            with pytest.raises(error[0], match=error[1]):
                _call(op, backend, args)
            continue
        results[backend] = _call(op, backend, args)
    if error is None:
        (ref_outs, ref_grads), tol = results["reference"], dict(rtol=2e-3, atol=2e-3)
        for backend, (outs, grads) in results.items():
            for a, b in zip(outs, ref_outs):
                assert a.shape == b.shape and a.dtype == b.dtype, (backend, a.shape, b.shape)
                torch.testing.assert_close(a.float(), b.float(), **tol, msg=f"{backend} output")
            for a, b in zip(grads, ref_grads):
                assert (a is None) == (b is None), backend
                if a is not None:
                    torch.testing.assert_close(a.float(), b.float(), **tol, msg=f"{backend} gradient")


@pytest.mark.parametrize("shape", [(1, 0), (0, 4), (0, 0)])
def test_model_refuses_empty_input_clearly(shape):
    model = fastgpt.GPT(fastgpt.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16))
    idx = torch.zeros(shape, dtype=torch.long)
    for backend in ("reference", "triton"):
        with use_backend(attention=backend, layer_norm=backend, bias_gelu=backend, linear_bias_gelu=backend, mlp=backend):
            with pytest.raises(ValueError, match=rf"idx must be \(B, T\) token ids with B >= 1 and 1 <= T <= 8, got shape \({shape[0]}, {shape[1]}\)"):
                model(idx, idx)


def test_model_refuses_float_tokens():
    model = fastgpt.GPT(fastgpt.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(TypeError, match="idx must hold integer token ids, got torch.float32"):
        model(torch.zeros(1, 4))
