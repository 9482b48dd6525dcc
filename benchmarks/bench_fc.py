"""c_fc + bias + GELU (the MLP's first half), forward, backward and both, for the paths a user
could take: torch eager (F.linear with its bias, then F.gelu), the same under torch.compile,
F.linear then fastgpt's Triton bias+GELU kernel (the `triton` backend), and fastgpt._C's CUTLASS
GEMM with bias, GELU and the pre-activation store in its epilogue (the `cuda` backend). GPT-2
small and XL widths, exact-erf GELU; TFLOP/s counts the GEMM work (backward = 2x forward)."""
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


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("C", WIDTHS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_fc_bias_gelu(benchmark, tokens, C, pass_, provider):
    if provider == "torch_compile" and not HAS_CUDA and pass_ != "fwd+bwd":
        pytest.skip("on the CPU one compiled case keeps the path exercised; timing it says nothing")
    x = torch.randn(tokens, C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    w = (torch.randn(4 * C, C, device=DEVICE, dtype=DTYPE) / C**0.5).requires_grad_()
    b = torch.zeros(4 * C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    dy = torch.randn(tokens, 4 * C, device=DEVICE, dtype=DTYPE)
    if provider == "torch":
        fwd = lambda: _torch_fc(x, w, b)  # noqa: E731
    elif provider == "torch_compile":
        torch._dynamo.reset()
        compiled = torch.compile(_torch_fc)
        fwd = lambda: compiled(x, w, b)  # noqa: E731
    else:
        fwd = lambda: fastgpt.ops.linear_bias_gelu(x, w, b)  # noqa: E731
    gemm = 2 * tokens * C * 4 * C
    with fastgpt.use_backend(linear_bias_gelu=BACKEND[provider]):
        if pass_ == "fwd":
            fn, flops = fwd, gemm
        elif pass_ == "bwd":
            y = fwd()
            fn, flops = (lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)), 2 * gemm
        else:
            fn, flops = (lambda: torch.autograd.grad(fwd(), (x, w, b), dy)), 3 * gemm
        run(benchmark, fn, group=f"c_fc+gelu {pass_} tokens={tokens} C={C} {str(DTYPE)[6:]}", provider=provider,
            flops=flops, tokens=tokens)
