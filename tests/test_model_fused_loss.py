"""GPTConfig(fused_loss=True): the loss through fastgpt.ops.linear_cross_entropy, with the values,
gradients and training curve of nanoGPT's F.cross_entropy path; -100 and strided targets on both
paths; inference, generate and checkpoints untouched; the trainer's fused_loss key."""
import pytest
import torch

import fastgpt
from fastgpt import GPT, GPTConfig, checkpoint, ops
from fastgpt.train import train
from helpers import DEVICE, assert_same_grads, losses, tiny

SMALL = dict(block_size=32, vocab_size=67, n_layer=2, n_head=4, n_embd=64)


def _pair(**kw):
    plain = GPT(GPTConfig(**SMALL, **kw))
    fused = GPT(GPTConfig(**SMALL, **kw, fused_loss=True))
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def _targets(B, T):
    t = torch.randint(0, SMALL["vocab_size"], (B, T))
    t[0, 2], t[1, 5], t[2, -1] = -1, -100, -100  # nanoGPT's ignore index and PyTorch's
    return t


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fused_loss_equals_plain_loss_and_gradients(backend):
    plain, fused = (m.to(DEVICE) for m in _pair())
    idx, tgt = torch.randint(0, SMALL["vocab_size"], (3, 17), device=DEVICE), _targets(3, 17).to(DEVICE)
    logits, loss = plain(idx, tgt)
    with fastgpt.use_backend(linear_cross_entropy=backend):
        none, fused_loss = fused(idx, tgt)
    assert none is None and logits.shape == (3, 17, SMALL["vocab_size"])
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    fused_loss.backward()
    assert_same_grads(fused, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused_loss", [False, True])
def test_minus_100_is_ignored_like_minus_1(fused_loss):
    model = GPT(GPTConfig(**SMALL, fused_loss=fused_loss))
    idx, tgt = torch.randint(0, SMALL["vocab_size"], (3, 17)), _targets(3, 17)
    torch.testing.assert_close(model(idx, tgt)[1], model(idx, tgt.masked_fill(tgt == -100, -1))[1], rtol=0, atol=0)


@pytest.mark.parametrize("fused_loss", [False, True])
def test_strided_idx_and_targets(fused_loss):
    """model(x[:, :-1], x[:, 1:]), and a transposed idx, as training loops slice them."""
    model = GPT(GPTConfig(**SMALL, fused_loss=fused_loss))
    seq = torch.randint(0, SMALL["vocab_size"], (3, 18))
    expected = model(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())[1]
    torch.testing.assert_close(model(seq[:, :-1], seq[:, 1:])[1], expected, rtol=0, atol=0)
    time_major = seq.t().contiguous()  # (T, B)
    torch.testing.assert_close(model(time_major[:-1].t(), time_major[1:].t())[1], expected, rtol=0, atol=0)


def test_all_targets_ignored():
    """fused: 0 (the op's convention); plain: NaN, as nanoGPT's F.cross_entropy gives."""
    plain, fused = _pair()
    idx, tgt = torch.randint(0, SMALL["vocab_size"], (2, 9)), torch.full((2, 9), -1)
    assert torch.isnan(plain(idx, tgt)[1])
    loss = fused(idx, tgt)[1]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in fused.parameters())


def test_inference_and_generate_are_untouched():
    plain, fused = _pair()
    plain.eval()
    fused.eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 9))
    (lp, np_), (lf, nf) = plain(idx), fused(idx)
    assert np_ is None and nf is None and lf.shape == (2, 1, SMALL["vocab_size"])
    torch.testing.assert_close(lf, lp, rtol=0, atol=0)
    for use_cache in (True, False):
        torch.manual_seed(5)
        a = plain.generate(idx, 30, temperature=0.9, top_k=10, use_cache=use_cache)
        torch.manual_seed(5)
        b = fused.generate(idx, 30, temperature=0.9, top_k=10, use_cache=use_cache)
        assert torch.equal(a, b)


def test_fused_loss_is_not_a_weights_argument():
    plain, _ = _pair()
    ckpt = {"model": plain.state_dict(), "model_args": checkpoint.model_args(plain.config)}
    assert "fused_loss" not in ckpt["model_args"]
    idx = torch.randint(0, SMALL["vocab_size"], (2, 9))
    for fused_loss in (False, True):
        model = checkpoint.model_from_checkpoint(ckpt, fused_loss=fused_loss)
        assert model.config.fused_loss is fused_loss
        torch.testing.assert_close(model(idx, idx)[1], plain(idx, idx)[1], rtol=1e-5, atol=1e-6)


def test_bad_fused_loss():
    with pytest.raises(ValueError, match="fused_loss must be True or False"):
        GPTConfig(**SMALL, fused_loss="yes")


def test_compile_fullgraph_with_fused_loss():
    _, model = _pair()
    idx, tgt = torch.randint(0, SMALL["vocab_size"], (2, 16)), _targets(3, 16)[:2]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, loss = compiled(idx, tgt)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(idx, tgt)[1].backward()
    assert logits is None
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_under_autocast_weight_gradient_stays_fp32():
    _, fused = _pair()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused(idx, idx)[1]
    loss.backward()
    assert loss.dtype == torch.float32 and fused.lm_head.weight.grad.dtype == torch.float32


@pytest.mark.slow
def test_trains_to_the_same_curve(text_file, data_dir, tmp_path):
    """300 steps of a tiny model with and without fused_loss (fp32, CPU): the first steps' losses
    agree to float rounding, and so do the last ones and the final eval loss."""
    runs = {}
    for fused in ("true", "false"):
        out = tmp_path / f"fused-{fused}"
        summary = train(tiny(text_file, data_dir, out, "--fused_loss", fused, "--eval_interval", "150", "--eval_iters", "8",
                             "--lr_decay_iters", "300", iters=300))
        assert summary["config"]["fused_loss"] is (fused == "true")
        runs[fused] = summary["val_loss"], losses(out)
    (val_f, log_f), (val_p, log_p) = runs["true"], runs["false"]
    for it in range(10):
        assert log_f[it] == pytest.approx(log_p[it], rel=1e-5), it
    late = [abs(log_f[it] - log_p[it]) / log_p[it] for it in range(250, 300)]
    assert max(late) < 1e-3, max(late)  # measured: 4e-7
    assert val_f == pytest.approx(val_p, rel=1e-3)
    assert val_f < log_f[0] - 1.0  # it learned


def test_trainer_default_is_fused(text_file, data_dir, tmp_path):
    summary = train(tiny(text_file, data_dir, tmp_path / "run", iters=2))
    assert summary["config"]["fused_loss"] is True


@pytest.mark.parametrize("fused", ["true", "false"])
def test_fine_tuning_follows_the_switch(text_file, data_dir, trained, tmp_path, monkeypatch, fused):
    """init_from (weights that were trained elsewhere) takes the trainer's fused_loss too."""
    calls = []
    op = ops.linear_cross_entropy
    monkeypatch.setattr(ops, "linear_cross_entropy", lambda *a, **k: calls.append(1) or op(*a, **k))
    train(tiny(text_file, data_dir, tmp_path / "ft", "--init_from", str(trained / "ckpt.pt"), "--fused_loss", fused, iters=2))
    assert bool(calls) is (fused == "true")
