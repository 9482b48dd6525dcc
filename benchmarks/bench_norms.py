"""LayerNorm and bias+GELU: fastgpt's Triton kernels against torch, forward, backward and both.

Bytes are the fused minimum each pass must move (x and y for the forward; x, dy and dx for the
backward), so GB/s compares providers on the same footing; torch's unfused bias+GELU moves more.
"""
import pytest
import torch
import torch.nn.functional as F

import fastgpt
from benchutil import DEVICE, HAS_CUDA, SHORT, run

if HAS_CUDA:
    ROWS = [16384] if SHORT else [4096, 16384, 65536]
    DTYPE = torch.bfloat16
else:
    ROWS, DTYPE = [64], torch.float32  # smoke shapes: the interpreter is slow
PASSES = ["fwd", "bwd", "fwd+bwd"]
PROVIDERS = ["torch", "triton"]  # torch first: it is the speedup baseline


def _case(fwd, inputs, out_shape, pass_):
    """A closure timing one pass; the backward-only pass reuses one forward graph."""
    dy = torch.randn(out_shape, device=DEVICE, dtype=DTYPE)
    if pass_ == "fwd":
        return lambda: fwd()
    if pass_ == "bwd":
        y = fwd()
        return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)
    return lambda: torch.autograd.grad(fwd(), inputs, dy)


def _tensors(M, N, *widths):
    x = torch.randn(M, N, device=DEVICE, dtype=DTYPE, requires_grad=True)
    return [x] + [torch.randn(w, device=DEVICE, dtype=DTYPE, requires_grad=True) for w in widths]


def _bytes(M, N, pass_):
    per = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}[pass_]
    return per * M * N * torch.finfo(DTYPE).bits // 8


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("N", [768, 3072])
@pytest.mark.parametrize("M", ROWS)
def test_layer_norm(benchmark, M, N, pass_, provider):
    x, w, b = _tensors(M, N, N, N)
    if provider == "torch":
        fwd = lambda: F.layer_norm(x, (N,), w, b)  # noqa: E731
    else:
        fwd = lambda: fastgpt.ops.layer_norm(x, w, b)  # noqa: E731
    with fastgpt.use_backend(layer_norm="triton"):
        fn = _case(fwd, [x, w, b], (M, N), pass_)
        run(benchmark, fn, group=f"layer_norm {pass_} M={M} N={N} {str(DTYPE)[6:]}", provider=provider,
            bytes_moved=_bytes(M, N, pass_))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("N", [3072])
@pytest.mark.parametrize("M", ROWS)
def test_bias_gelu(benchmark, M, N, pass_, provider):
    x, b = _tensors(M, N, N)
    if provider == "torch":
        fwd = lambda: F.gelu(x + b)  # noqa: E731
    else:
        fwd = lambda: fastgpt.ops.bias_gelu(x, b)  # noqa: E731
    with fastgpt.use_backend(bias_gelu="triton"):
        fn = _case(fwd, [x, b], (M, N), pass_)
        run(benchmark, fn, group=f"bias_gelu {pass_} M={M} N={N} {str(DTYPE)[6:]}", provider=provider,
            bytes_moved=_bytes(M, N, pass_))
