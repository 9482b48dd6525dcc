"""LayerNorm and bias+GELU: fastgpt's Triton kernels against torch eager, torch.compile's generated
kernels and (LayerNorm) Liger-Kernel's Triton LayerNorm; forward, backward and both.

Bytes are the fused minimum each pass must move (x and y for the forward; x, dy and dx for the
backward), so GB/s compares providers on the same footing; torch's unfused bias+GELU moves more.
The torch.compile and Liger peers are GPU-only: on the CPU inductor emits C++ (no peer of a
Triton kernel) and Liger's kernels do not run under the Triton interpreter. Liger is not a
dependency: the GPU check installs the wheel scripts/gpu_carry.sh carried along.
"""
import functools

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
PROVIDERS = ["torch", "torch.compile", "triton"]  # torch first: it is the speedup baseline
LN_PROVIDERS = ["torch", "torch.compile", "liger", "triton"]


@functools.cache
def _compiled(op):
    return torch.compile(op, dynamic=False)


def _peer(provider, torch_op):
    """The forward of a peer provider (torch eager, torch.compile or Liger), or a pytest skip."""
    if provider == "torch":
        return torch_op
    if not HAS_CUDA:
        pytest.skip(f"{provider}: needs CUDA (see the module docstring)")
    if provider == "torch.compile":
        return _compiled(torch_op)
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    except ImportError as e:
        pytest.skip(f"liger: liger-kernel is not installed ({e}); the GPU check installs the wheel scripts/gpu_carry.sh carries")
    return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)


def _layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b)


def _bias_gelu(x, b):
    return F.gelu(x + b)


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


@pytest.mark.parametrize("provider", LN_PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("N", [768, 3072])
@pytest.mark.parametrize("M", ROWS)
def test_layer_norm(benchmark, M, N, pass_, provider):
    x, w, b = _tensors(M, N, N, N)
    if provider == "triton":
        fwd = lambda: fastgpt.ops.layer_norm(x, w, b)  # noqa: E731
    else:
        op = _peer(provider, _layer_norm)
        fwd = lambda: op(x, w, b)  # noqa: E731
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
    if provider == "triton":
        fwd = lambda: fastgpt.ops.bias_gelu(x, b)  # noqa: E731
    else:
        op = _peer(provider, _bias_gelu)
        fwd = lambda: op(x, b)  # noqa: E731
    with fastgpt.use_backend(bias_gelu="triton"):
        fn = _case(fwd, [x, b], (M, N), pass_)
        run(benchmark, fn, group=f"bias_gelu {pass_} M={M} N={N} {str(DTYPE)[6:]}", provider=provider,
            bytes_moved=_bytes(M, N, pass_))
