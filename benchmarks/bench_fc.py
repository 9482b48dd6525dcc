"""c_fc + bias + GELU (the MLP's first half), and the whole MLP (c_fc, GELU, c_proj: the op whose
backward fuses the dGELU into c_proj's dx GEMM), forward, backward and both, for the paths a
user could take: torch eager (F.linear with its bias, then F.gelu), the same under torch.compile,
F.linear then fastgpt's Triton bias+GELU kernel (the `triton` backend), and fastgpt._C's CUTLASS
GEMMs (the `cuda` backend: bias, GELU and the pre-activation store in c_fc's epilogue; in the
MLP's backward the dGELU in the epilogue of c_proj's dx GEMM).
GPT-2 small and XL widths, exact-erf GELU; TFLOP/s counts the GEMM work (backward = 2x forward)."""
import pytest
import torch
import torch.nn.functional as F

import fastgpt
from benchutil import DEVICE, HAS_CUDA, SHORT, run

if HAS_CUDA:
    TOKENS, DTYPE = ([16384] if SHORT else [8192, 16384]), torch.bfloat16
    WIDTHS = [768] if SHORT else [768, 1600]
else:
    TOKENS, DTYPE, WIDTHS = [64], torch.float32, [32]  # smoke shapes: C++ twin, Triton interpreter
PROVIDERS = ["torch", "torch_compile", "triton", "fastgpt_C"]  # torch first: it is the speedup baseline
BACKEND = {"torch": "reference", "torch_compile": "reference", "triton": "triton", "fastgpt_C": "cuda"}


def _torch_fc(x, w, b):
    return F.gelu(F.linear(x, w, b))


def _torch_mlp(x, w_fc, b_fc, w_proj, b_proj):
    return F.linear(F.gelu(F.linear(x, w_fc, b_fc)), w_proj, b_proj)


def _bench(benchmark, op, eager, x, params, dy, pass_, provider, gemm_flops, group):
    """One case: op (fastgpt's, on the provider's backend) or eager (torch, maybe compiled) on
    x and params; backward against dy."""
    if provider == "torch_compile" and not HAS_CUDA and pass_ != "fwd+bwd":
        pytest.skip("on the CPU one compiled case keeps the path exercised; timing it says nothing")
    if provider == "torch":
        fwd = lambda: eager(x, *params)  # noqa: E731
    elif provider == "torch_compile":
        torch._dynamo.reset()
        compiled = torch.compile(eager)
        fwd = lambda: compiled(x, *params)  # noqa: E731
    else:
        fwd = lambda: getattr(fastgpt.ops, op)(x, *params)  # noqa: E731
    with fastgpt.use_backend(**{op: BACKEND[provider]}):
        if pass_ == "fwd":
            fn, flops = fwd, gemm_flops
        elif pass_ == "bwd":
            y = fwd()
            fn, flops = (lambda: torch.autograd.grad(y, (x, *params), dy, retain_graph=True)), 2 * gemm_flops
        else:
            fn, flops = (lambda: torch.autograd.grad(fwd(), (x, *params), dy)), 3 * gemm_flops
        run(benchmark, fn, group=f"{group} {pass_} tokens={len(x)} C={x.shape[1]} {str(DTYPE)[6:]}", provider=provider,
            flops=flops, tokens=len(x))


def _weight(rows, cols):
    return (torch.randn(rows, cols, device=DEVICE, dtype=DTYPE) / cols**0.5).requires_grad_()


def _bias(n):
    return torch.zeros(n, device=DEVICE, dtype=DTYPE, requires_grad=True)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("C", WIDTHS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_fc_bias_gelu(benchmark, tokens, C, pass_, provider):
    x = torch.randn(tokens, C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    dy = torch.randn(tokens, 4 * C, device=DEVICE, dtype=DTYPE)
    _bench(benchmark, "linear_bias_gelu", _torch_fc, x, [_weight(4 * C, C), _bias(4 * C)], dy, pass_, provider,
           2 * tokens * C * 4 * C, "c_fc+gelu")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("C", WIDTHS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_mlp(benchmark, tokens, C, pass_, provider):
    x = torch.randn(tokens, C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    dy = torch.randn(tokens, C, device=DEVICE, dtype=DTYPE)
    params = [_weight(4 * C, C), _bias(4 * C), _weight(C, 4 * C), _bias(C)]
    _bench(benchmark, "mlp", _torch_mlp, x, params, dy, pass_, provider, 2 * (2 * tokens * C * 4 * C), "mlp")
