"""End to end: tokens/s of a training step (forward, backward, AdamW step), of inference over a
full context, and of KV-cache generation, for the paths a user would pick:

  reference           eager PyTorch ops (nanoGPT's path)
  reference+compile   the same under torch.compile
  fused               fastgpt's kernels where the device has them (auto backend)
  fused+compile       the same under torch.compile

On a GPU: GPT-2 124M at context 512 and 1024, bf16 autocast. On the CPU: the small char-level
preset and GPT-2 124M at batch 1 (compiled providers only for the small preset: compiling
GPT-2 on 2 cores takes minutes). MFU is against the card's dense bf16 peak.
"""
import contextlib

import pytest
import torch

import fastgpt
from benchutil import DEVICE, HAS_CUDA, SHORT, peaks, run

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
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), DEVICE)

        def step():
            with _autocast():
                _, loss = fn_model(idx, idx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

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
    info = run(benchmark, step, group=f"gpt {mode} {preset} B={B} T={T}", provider=provider, baseline="reference",
               tokens=tokens, **extra)
    _, peak_flops = peaks()
    if mode == "train" and peak_flops and "tokens/s" in info:
        mfu = model.estimate_mfu(B, B * T / info["tokens/s"], peak_flops=peak_flops)
        benchmark.extra_info["mfu"] = info["mfu"] = round(mfu, 3)


@pytest.mark.skipif(not HAS_CUDA or SHORT, reason="GPU only, and not in short mode")
@pytest.mark.parametrize("provider", ["reference", "fused"])
def test_longest_context_at_batch_1(benchmark, provider):
    """The longest power-of-two context whose training step fits in memory at batch 1."""
    best = 0
    for T in (2048, 4096, 8192, 16384, 32768, 65536):
        try:
            model, _ = _model("gpt2", T, provider)
            idx = torch.randint(0, 50257, (1, T), device=DEVICE)
            with _autocast():
                loss = model(idx, idx)[1]
            loss.backward()
            best = T
        except torch.OutOfMemoryError:
            break
        finally:
            model = idx = loss = None
            torch.cuda.empty_cache()
    benchmark.extra_info["longest_context"] = best
    run(benchmark, lambda: None, group="gpt longest context at batch 1", provider=provider, baseline="reference",
        longest_context=best)
