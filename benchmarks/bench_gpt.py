"""End to end: tokens/s of a training step (forward, backward, AdamW step), of inference over a
full context, and of KV-cache generation, for the paths a user would pick:

  reference           eager PyTorch ops (nanoGPT's path)
  reference+compile   the same under torch.compile
  fused               fastgpt's kernels where the device has them (auto backend)
  fused+compile       the same under torch.compile

On a GPU: GPT-2 124M at context 512 and 1024, bf16 autocast. On the CPU: the small char-level
preset and GPT-2 124M at batch 1 (compiled providers only for the small preset: compiling
GPT-2 on 2 cores takes minutes). MFU is against the matmul ceiling the GPU check measured on
the card (benchutil.peaks), else its datasheet's dense bf16 peak.

test_train_largest_batch is the headline comparison: GPT-2 124M training at T = 1024 (bf16
autocast, fused AdamW) at the largest batch that fits, for each provider.
"""
import contextlib
import functools
import time

import pytest
import torch

import fastgpt
from benchutil import DEVICE, DRY, HAS_CUDA, SHORT, peaks, run

if HAS_CUDA:
    CONFIGS = [("gpt2", 16, 1024)] if SHORT else [("gpt2", 32, 512), ("gpt2", 16, 1024)]
else:
    CONFIGS = [("shakespeare-char-small", 12, 64), ("gpt2", 1, 64)]
PROVIDERS = ["reference", "reference+compile", "fused", "fused+compile"]  # reference: the baseline
MODES = ["train", "infer", "generate"]


def _autocast():
    return torch.autocast("cuda", torch.bfloat16) if HAS_CUDA else contextlib.nullcontext()


def _model(preset, T, provider):
    torch.manual_seed(0)
    backend = "reference" if provider.startswith("reference") else "auto"
    model = fastgpt.GPT.from_preset(preset, block_size=T, dropout=0.0, backend=backend).to(DEVICE)
    if provider.endswith("+compile"):
        torch._dynamo.reset()
        return model, torch.compile(model)
    return model, model


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("preset,B,T", CONFIGS)
def test_gpt(benchmark, preset, B, T, mode, provider):
    compiled = provider.endswith("+compile")
    if compiled and not HAS_CUDA and preset != "shakespeare-char-small":
        pytest.skip("torch.compile of GPT-2 on a 2-core CPU takes minutes: GPU only")
    if compiled and mode == "generate":
        pytest.skip("generation runs eager (each step has a new shape)")
    model, fn_model = _model(preset, T, provider)
    vocab = model.config.vocab_size
    idx = torch.randint(0, vocab, (B, T), device=DEVICE)
    extra = {}
    if mode == "train":
        step = _train_step(model, fn_model, idx)
        tokens = B * T
    elif mode == "infer":
        model.eval()

        def step():
            with torch.no_grad(), _autocast():
                fn_model(idx, idx)

        tokens = B * T
    else:
        model.eval()
        new = 16 if SHORT or not HAS_CUDA else 64
        prompt = idx[:, : T - new]

        def step():
            with _autocast():
                model.generate(prompt, new, top_k=50)

        tokens = B * new
    step()  # warm-up: compiles kernels and graphs outside the timing
    if HAS_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra["peak_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20)
    run(benchmark, step, group=f"gpt {mode} {preset} B={B} T={T}", provider=provider, baseline="reference",
        tokens=tokens, derived=_mfu(model, B) if mode == "train" else None, **extra)


def _mfu(model, B):
    """derived(t) for benchutil.run: MFU of a training step of B sequences taking t seconds."""
    _, peak_flops = peaks()
    return lambda t: {"mfu": round(model.estimate_mfu(B, t, peak_flops=peak_flops), 3)} if peak_flops else {}


# The largest-batch comparison: the eager providers first (cheap), the baseline first of all.
LARGEST_PROVIDERS = ["reference", "fused", "reference+compile", "fused+compile"]
LARGEST_PRESET, LARGEST_T = ("gpt2", 1024) if HAS_CUDA else ("shakespeare-char-small", 64)
SEARCH_SECONDS, FIRST_BATCH, MAX_BATCH = (30.0, 8, 1024) if HAS_CUDA else (5.0, 1, 2 if DRY else 4)


def _train_step(model, fn_model, idx):
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), DEVICE)  # fused AdamW (nanoGPT's choice)

    def step():
        with _autocast():
            _, loss = fn_model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _fits(provider, B):
    """Whether two training steps of ``provider``'s eager model at batch B fit in memory."""
    model, fn_model = _model(LARGEST_PRESET, LARGEST_T, provider)
    idx = torch.randint(0, model.config.vocab_size, (B, LARGEST_T), device=DEVICE)
    try:
        step = _train_step(model, fn_model, idx)
        step()
        step()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del model, fn_model, idx
        if HAS_CUDA:
            torch.cuda.empty_cache()


@functools.cache
def largest_batch(provider):
    """The largest batch whose training step fits: doubling from FIRST_BATCH with the eager
    model of the provider's backend (a compiled model needs no more memory, and each new batch
    would recompile; so a compiled provider reuses its eager twin's answer), capped at
    SEARCH_SECONDS and MAX_BATCH."""
    if provider.endswith("+compile"):
        return largest_batch(provider.removesuffix("+compile"))
    t0, best, B = time.perf_counter(), 0, FIRST_BATCH
    while B <= MAX_BATCH and time.perf_counter() - t0 < SEARCH_SECONDS and _fits(provider, B):
        best, B = B, 2 * B
    return best or 1


@pytest.mark.parametrize("provider", LARGEST_PROVIDERS)
def test_train_largest_batch(benchmark, provider):
    if provider.endswith("+compile") and not HAS_CUDA:
        pytest.skip("needs CUDA: the compiled providers' largest batch is searched on the GPU (test_gpt covers compile on the CPU)")
    B = FIRST_BATCH if benchmark.disabled else largest_batch(provider)  # the smoke run skips the search
    while True:  # a compiled model that does not fit after all: halve (one recompile each)
        model, fn_model = _model(LARGEST_PRESET, LARGEST_T, provider)
        idx = torch.randint(0, model.config.vocab_size, (B, LARGEST_T), device=DEVICE)
        step = _train_step(model, fn_model, idx)
        try:
            step()  # warm-up: compiles kernels and graphs, allocates the optimizer state
            break
        except torch.OutOfMemoryError:
            if B == 1:
                raise
            B //= 2
            del model, fn_model, idx, step
            torch.cuda.empty_cache()
    extra = {"batch": B, "search": f"doubling from {FIRST_BATCH}, <= {SEARCH_SECONDS:.0f} s, <= {MAX_BATCH}"}
    if HAS_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra["peak_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20)
    run(benchmark, step, group=f"gpt train {LARGEST_PRESET} T={LARGEST_T} largest batch", provider=provider,
        baseline="reference", tokens=B * LARGEST_T, derived=_mfu(model, B), **extra)
