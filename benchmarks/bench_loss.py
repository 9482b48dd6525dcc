"""The loss stage: the lm_head matmul and the cross-entropy, forward and backward, with peak memory.

  torch              F.linear + F.cross_entropy, eager: nanoGPT's path (the baseline)
  torch+compile      the same under torch.compile (one dynamic-shape graph per pass)
  fastgpt-reference  fastgpt.ops.linear_cross_entropy on the reference backend (chunked PyTorch)
  fastgpt-triton     the same on the triton backend (what ``auto`` picks on a GPU)
  liger              Liger-Kernel's LigerFusedLinearCrossEntropyLoss (GPU, when liger_kernel imports)

Passes: ``loss`` (the forward under no_grad, as evaluation runs it) and ``fwd+bwd`` (the loss
and the gradients of x and the weight). On a GPU: GPT-2 124M's shapes, C = 768, V = 50304,
N = 4096 .. 32768 tokens, x and the weight in bf16; ``peak_mem_MiB`` is the most memory
allocated above the inputs during one call (``torch.cuda.max_memory_allocated``): the logits,
their gradient and the two input gradients. TFLOP/s counts the matmuls (2NCV each; three for
fwd+bwd). ``test_loss_stage_autocast`` is the stage as fastgpt.train runs it: x and the weight
fp32 (the master weights) under bf16 autocast. On the CPU (the smoke run): tiny shapes,
untimed in CI.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import fastgpt
from benchutil import DEVICE, HAS_CUDA, SHORT, run, sync

if HAS_CUDA:
    ROWS = [16384] if SHORT else [4096, 8192, 16384, 32768]
    C, V, DTYPE = 768, 50304, torch.bfloat16
else:
    ROWS, C, V, DTYPE = [96], 32, 1031, torch.float32
PASSES = ["loss", "fwd+bwd"]
PROVIDERS = ["torch", "torch+compile", "fastgpt-reference", "fastgpt-triton", "liger"]  # torch first: the baseline


def _nanogpt_loss(x, w, t):
    logits = F.linear(x, w)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), t.view(-1), ignore_index=-1)


@functools.cache
def _compiled():
    return torch.compile(_nanogpt_loss, dynamic=True)


def _liger():
    if not HAS_CUDA:
        pytest.skip("Liger-Kernel runs on CUDA only")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as e:
        pytest.skip(f"liger_kernel does not import ({e})")
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-1)
    return lambda x, w, t: loss(w, x, t)


def _loss_fn(provider):
    if provider == "torch":
        return _nanogpt_loss
    if provider == "torch+compile":
        return _compiled()
    if provider == "liger":
        return _liger()
    backend = provider.split("-")[1]

    def fused(x, w, t):
        with fastgpt.use_backend(linear_cross_entropy=backend):
            return fastgpt.ops.linear_cross_entropy(x, w, t)

    return fused


def _peak_extra_mib(fn):
    """MiB allocated above what was allocated before one call of ``fn`` (CUDA), else None."""
    if not HAS_CUDA:
        return None
    sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20)


def _measure(benchmark, loss_fn, x, w, t, pass_, group, provider, autocast=None):
    def loss():
        if autocast is None:
            return loss_fn(x, w, t)
        with torch.autocast(DEVICE, dtype=autocast):
            return loss_fn(x, w, t)

    if pass_ == "loss":
        def step():
            with torch.no_grad():
                return loss()
    else:
        def step():
            return torch.autograd.grad(loss(), (x, w))

    step()  # warm-up: compiles kernels and graphs outside the measurement
    extra = {}
    peak = _peak_extra_mib(step)
    if peak is not None:
        extra["peak_mem_MiB"] = peak
    N = x.shape[0]
    matmuls = 1 if pass_ == "loss" else 3
    run(benchmark, step, group=group, provider=provider, flops=2 * N * C * V * matmuls, tokens=N, **extra)


def _inputs(N, dtype):
    x = torch.randn(N, C, device=DEVICE).to(dtype).requires_grad_()
    w = (torch.randn(V, C, device=DEVICE) * 0.02).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), device=DEVICE)
    t[::50] = -1  # a few ignored targets, as padded batches have
    return x, w, t


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("N", ROWS)
def test_loss_stage(benchmark, N, pass_, provider):
    loss_fn = _loss_fn(provider)
    _measure(benchmark, loss_fn, *_inputs(N, DTYPE), pass_, f"loss {pass_} N={N} C={C} V={V} {str(DTYPE)[6:]}", provider)


@pytest.mark.parametrize("provider", ["torch", "torch+compile", "fastgpt-triton"] if HAS_CUDA else ["torch", "fastgpt-reference"])
@pytest.mark.parametrize("N", ROWS)
def test_loss_stage_autocast(benchmark, N, provider):
    loss_fn = _loss_fn(provider)
    _measure(benchmark, loss_fn, *_inputs(N, torch.float32), "fwd+bwd", f"loss fwd+bwd N={N} C={C} V={V} fp32 weights, bf16 autocast",
             provider, autocast=torch.bfloat16)
