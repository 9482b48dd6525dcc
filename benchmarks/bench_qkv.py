"""The fused QKV projection (fastgpt._C: CUTLASS GEMMs with the head split in the epilogue and
in-place backward operands) against the PyTorch path it replaces: nn.Linear then
split/view/transpose into heads (views: fastgpt's attention reads strided q, k, v, so no copy
follows), eager and under torch.compile. GPT-2 small and XL widths; TFLOP/s counts the GEMM
work (backward = 2x forward), frac_peak_flops is against the card's dense bf16 peak."""
import pytest
import torch

import fastgpt
from benchutil import DEVICE, HAS_CUDA, SHORT, run
from fastgpt import reference

if HAS_CUDA:
    TOKENS, DTYPE = ([16384] if SHORT else [8192, 16384]), torch.bfloat16
    WIDTHS = [(768, 12)] if SHORT else [(768, 12), (1600, 25)]
else:
    TOKENS, DTYPE, WIDTHS = [128], torch.float32, [(64, 4)]  # smoke shapes: the extension's C++ twin
T = 1024
PROVIDERS = ["torch", "torch_compile", "fastgpt_C"]  # torch first: it is the speedup baseline


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("C,H", WIDTHS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_qkv_projection(benchmark, tokens, C, H, pass_, provider):
    if provider == "torch_compile" and not HAS_CUDA and pass_ != "fwd+bwd":
        pytest.skip("on the CPU one compiled case keeps the path exercised; timing it says nothing")
    t = min(T, tokens)
    B = tokens // t
    x = torch.randn(B, t, C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    w = (torch.randn(3 * C, C, device=DEVICE, dtype=DTYPE) / C**0.5).requires_grad_()
    b = torch.zeros(3 * C, device=DEVICE, dtype=DTYPE, requires_grad=True)
    grads = [torch.randn(B, H, t, C // H, device=DEVICE, dtype=DTYPE) for _ in range(3)]
    if provider == "torch":
        fwd = lambda: reference.qkv_projection(x, w, b, H)  # noqa: E731
    elif provider == "torch_compile":
        torch._dynamo.reset()
        compiled = torch.compile(reference.qkv_projection)
        fwd = lambda: compiled(x, w, b, H)  # noqa: E731
    else:
        fwd = lambda: fastgpt.ops.qkv_projection(x, w, b, H)  # noqa: E731
    gemm = 2 * tokens * 3 * C * C
    with fastgpt.use_backend(qkv_projection="cuda"):
        if pass_ == "fwd":
            fn, flops = fwd, gemm
        elif pass_ == "bwd":
            outs = fwd()
            fn, flops = (lambda: torch.autograd.grad(outs, (x, w, b), grads, retain_graph=True)), 2 * gemm
        else:
            fn, flops = (lambda: torch.autograd.grad(fwd(), (x, w, b), grads)), 3 * gemm
        run(benchmark, fn, group=f"qkv_projection {pass_} tokens={tokens} C={C} {str(DTYPE)[6:]}", provider=provider,
            flops=flops, tokens=tokens)
