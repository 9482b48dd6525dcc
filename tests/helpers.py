"""What the tests share: where kernels run, seeded inputs, gradients, the 2x rule, training runs.

The numeric-equivalence rule (shared/CONVENTIONS.md, flash-attention's): a kernel's max error
against the fp32 oracle (``fastgpt.reference`` on upcast inputs) may be at most twice the error
of the plain PyTorch op run in the same low precision, plus a small floor. The floor exists
because in fp32 the plain op *is* the oracle (its error is 0), and a kernel that sums in a
different order still differs by a few ulps.
"""
import csv
import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# Where kernel tests put their tensors: the GPU when there is one, else the CPU (interpreter;
# conftest.py switches it on before triton is imported).
DEVICE = "cuda" if HAS_CUDA else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# numerics

# Floor of the 2x rule, relative to the oracle's largest magnitude, per input dtype.
FLOOR = {
    torch.float32: 2e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def randn(*shape, dtype=torch.float32, device=DEVICE, scale=1.0, shift=0.0, generator=None):
    """Normal samples drawn in fp32 on the CPU (the same values on every device and in every
    dtype for one seed), then moved and cast."""
    return (torch.randn(*shape, generator=generator) * scale + shift).to(device, dtype)


def copy(t, dtype=None, device=None):
    """A copy of ``t`` with the same sizes and strides (a strided view stays strided), cast/moved."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=dtype or t.dtype, device=device or t.device)
    return out.copy_(t.detach())


def leaf(t, dtype=None, device=None):
    """A fresh gradient-tracking copy of ``t`` (None stays None), same strides, cast/moved."""
    return None if t is None else copy(t, dtype, device).requires_grad_()


def grads(fn, inputs, dy):
    """(fn(), d fn()/d inputs) for the inputs that require grad, with upstream gradient dy."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    y = fn()
    return y, torch.autograd.grad(y, leaves, dy.to(y.device, y.dtype))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double().to(a.device)).abs().max().item() if a.numel() else 0.0


def assert_2x_rule(name, out, plain, oracle, dtype=None, floor=None):
    """Assert ``max|out - oracle| <= 2 * max|plain - oracle| + floor``.

    out:    the kernel's result (any dtype).
    plain:  the plain PyTorch op run in the kernel's (low) precision.
    oracle: the reference op run in fp32 on upcast inputs.
    dtype:  the precision the kernel ran in (picks the floor); defaults to ``out.dtype``.
    """
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != oracle {tuple(oracle.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values in the kernel's output"
    dtype = dtype or out.dtype
    scale = max(1.0, oracle.detach().abs().max().item()) if oracle.numel() else 1.0
    floor = FLOOR[dtype] * scale if floor is None else floor
    err, base = max_err(out, oracle), max_err(plain, oracle)
    bound = 2 * base + floor
    assert err <= bound, (
        f"{name}: max error {err:.3e} vs fp32 oracle exceeds 2 x plain-torch error "
        f"{base:.3e} + floor {floor:.1e} (= {bound:.3e}) in {dtype}"
    )


def check_2x_rule(run, inputs, dy, dtype, names):
    """The 2x rule on a call's output and every gradient.

    run(inputs, kernel: bool) -> output: the op on ``inputs`` (leaves made here), through the
    kernel when ``kernel`` else through the reference. The inputs are rounded to ``dtype``
    once; then it runs three times: the kernel in ``dtype``, the reference in ``dtype`` (plain)
    and the reference in fp32 on the upcast inputs (oracle).
    names: the output's name then one per gradient-carrying input, e.g. ("y", "dx", "dw").
    """
    floating = [isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs]
    rounded = [copy(t, dtype) if f else t for t, f in zip(inputs, floating)]
    results = []
    for kernel, prec in ((True, dtype), (False, dtype), (False, torch.float32)):
        xs = [leaf(t, prec) if f else t for t, f in zip(rounded, floating)]
        results.append(grads(lambda xs=xs, kernel=kernel: run(xs, kernel), xs, dy))
    (y, gs), (py, pgs), (oy, ogs) = results
    assert y.dtype == dtype, f"{names[0]}: dtype {y.dtype}, expected {dtype}"
    for name, a, p, o in zip(names, (y, *gs), (py, *pgs), (oy, *ogs)):
        assert_2x_rule(name, a, p, o, dtype)


def assert_same_grads(model, other, rtol=1e-4, atol=1e-6):
    """Every parameter gradient of ``model`` equals ``other``'s (matched by name)."""
    theirs = dict(other.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=rtol, atol=atol, msg=name)


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------
# training runs

WORDS = ("the king my lord sweet love thou art what shall we do now good night fair queen hath "
         "not been so long and yet I say to you come away death").split()


def make_text(n_chars=40_000, seed=0):
    """Shakespeare-flavoured word salad: enough structure for a tiny model to learn in steps."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?") + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)


def tiny(text_file, data_dir, out_dir, *extra, iters=20):
    """fastgpt.train arguments for a run of a few seconds on the CPU."""
    return ["--data", text_file, "--data_dir", data_dir, "--out_dir", str(out_dir), "--device", "cpu", "--threads", "1",
            "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
            "--max_iters", str(iters), "--eval_interval", "10", "--eval_iters", "2", "--warmup_iters", "5",
            "--lr_decay_iters", "40", "--sample_chars", "0", "--progress", "false", "--plot", "false", *extra]


def losses(out_dir):
    """{iteration: loss} from a run's log.csv."""
    with open(os.path.join(out_dir, "log.csv"), newline="") as f:
        return {int(r["iter"]): float(r["loss"]) for r in csv.DictReader(f)}


def error_of(argv):
    """The one-line error ``fastgpt.train.main(argv)`` exits with."""
    from fastgpt.train import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# pretrained weights and GPT-2's tokenizer, made here (nothing is downloaded)

TINY_MERGES = (b"th", b"he", b"the", b" t", b"in", b"ng", b"ing", b"ou", b" the", b"ll")


def tiny_bpe_ranks():
    """A byte-level BPE like GPT-2's, shrunk: the 256 bytes, a few merges (ranks in order), then
    placeholder tokens ``<id>`` up to GPT-2's 50256, so every id a GPT-2-sized model samples decodes."""
    ranks = {bytes([b]): b for b in range(256)}
    for m in TINY_MERGES:
        ranks[m] = len(ranks)
    for i in range(len(ranks), 50256):
        ranks[b"<%d>" % i] = i
    return ranks


def write_tiktoken_file(path):
    """A tiktoken encoding file (base64 token, rank per line) for FASTGPT_GPT2_BPE."""
    import base64

    with open(path, "wb") as f:
        for tok, rank in tiny_bpe_ranks().items():
            f.write(base64.b64encode(tok) + b" %d\n" % rank)
    return str(path)


def write_vocab_json(directory):
    """The same vocabulary as a Hugging Face GPT-2 directory's vocab.json (GPT-2's byte-to-unicode names)."""
    import json

    from fastgpt.data import _byte_decoder

    name = {b: c for c, b in _byte_decoder().items()}
    vocab = {"".join(name[b] for b in tok): rank for tok, rank in tiny_bpe_ranks().items()}
    vocab["<|endoftext|>"] = 50256
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)


def tiny_gpt2(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50257):
    """A GPT with GPT-2's vocabulary and biases, weights moved off the init (so a model started
    from them is told apart from a fresh one)."""
    from fastgpt import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()
