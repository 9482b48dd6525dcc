"""Causal attention: fastgpt's Triton flash-attention against PyTorch's scaled_dot_product_attention
with each of its backends forced (flash, cuDNN, memory-efficient) and a naive implementation
that materialises the T x T scores. A backend that cannot run here is skipped with torch's own
reason. TFLOP/s count causal work as half; the backward is 2.5x the forward's FLOPs
(flash-attention's convention). Peak memory of a forward+backward is recorded on a GPU."""
import warnings

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
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION"}
PROVIDERS = [*SDPA_BACKENDS, "naive", "triton"]  # sdpa-flash first: it is the speedup baseline


def _sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend)

    def sdpa(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return sdpa


def _attention_fn(provider):
    if provider == "triton":
        return lambda q, k, v: fastgpt.ops.attention(q, k, v, causal=True)
    if provider == "naive":
        return lambda q, k, v: reference.attention_math(q, k, v, causal=True)
    return _sdpa(SDPA_BACKENDS[provider])


def _why_not(attn, q, k, v):
    """None if ``attn`` runs forward and backward on these inputs, else why not (torch's warnings
    say why a forced SDPA backend was refused)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autograd.grad(attn(q, k, v).sum(), (q, k, v))
            return None
        except RuntimeError as e:
            reasons = "; ".join(" ".join(str(w.message).split()) for w in caught)
            return f"{str(e).splitlines()[0]} ({reasons[:400] or 'torch gave no reason'})"


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
    if provider in SDPA_BACKENDS:
        why = _why_not(attn, q, k, v)
        if why:
            pytest.skip(f"{provider} unavailable on {DEVICE} {str(DTYPE)[6:]}: {why}")
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
            baseline="sdpa-flash", flops=flops, tokens=B * T, **extra)
