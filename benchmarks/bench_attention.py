"""Causal attention: fastgpt's Triton flash-attention against SDPA (flash backend on a GPU) and a
naive implementation that materialises the T x T scores. TFLOP/s count causal work as half;
the backward is 2.5x the forward's FLOPs (flash-attention's convention). Peak memory of a
forward+backward is recorded against the naive implementation's."""
import pytest
import torch

import fastgpt
from benchutil import DEVICE, HAS_CUDA, SHORT, run
from fastgpt import reference

if HAS_CUDA:
    TOKENS, H, D, DTYPE = 16384, 12, 64, torch.bfloat16
    SEQ = [1024, 4096] if SHORT else [512, 1024, 2048, 4096, 8192]
else:
    TOKENS, H, D, DTYPE = 64, 2, 64, torch.float32  # smoke shapes for the interpreter
    SEQ = [64]
PASSES = ["fwd", "bwd", "fwd+bwd"]
PROVIDERS = ["sdpa", "naive", "triton"]  # sdpa first: it is the speedup baseline


def _attention_fn(provider):
    if provider == "triton":
        return lambda q, k, v: fastgpt.ops.attention(q, k, v, causal=True)
    if provider == "naive":
        return lambda q, k, v: reference.attention_math(q, k, v, causal=True)

    def sdpa(q, k, v):
        if HAS_CUDA:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return sdpa


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("T", SEQ)
def test_attention(benchmark, T, pass_, provider):
    B = max(1, TOKENS // T)
    if provider == "naive" and HAS_CUDA and SHORT and T > 1024:
        pytest.skip("short mode: the naive baseline only at T <= 1024")
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE)
    attn = _attention_fn(provider)
    fwd_flops = 4 * B * H * T * T * D * 0.5
    with fastgpt.use_backend(attention="triton"):
        if pass_ == "fwd":
            fn, flops = (lambda: attn(q, k, v)), fwd_flops
        elif pass_ == "bwd":
            o = attn(q, k, v)
            fn, flops = (lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)), 2.5 * fwd_flops
        else:
            fn, flops = (lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), do)), 3.5 * fwd_flops
        extra = {}
        if HAS_CUDA and pass_ == "fwd+bwd":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            extra["peak_mem_MiB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        run(benchmark, fn, group=f"attention {pass_} B={B} H={H} T={T} D={D} {str(DTYPE)[6:]}", provider=provider,
            baseline="sdpa", flops=flops, tokens=B * T, **extra)
