"""Fault injection: what a run survives, and what it refuses with one clear line.

kill -9 in the middle of saving, damaged files, a full disk, read-only directories, a loss that
turns NaN at an evaluation, and a resume under the default auto-tuned CPU threads. Tests that
need to mount a file system (a small tmpfs, a read-only bind mount) skip, saying why, where
this process may not mount (as root, permission bits do not stop writes: only a read-only
mount does).
"""
import contextlib
import csv
import errno
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastgpt import GPT, checkpoint
from fastgpt.runtime import Distributed, ThreadTuner, cpu_cores
from fastgpt.train import check_out_dir, train
from helpers import ROOT, error_of, losses, tiny

# ---------------------------------------------------------------------------------------------
# mounts


def _mount(*args):
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here ({r.stderr.strip() or r.returncode}): needs root or CAP_SYS_ADMIN")


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
    """A tmpfs of ``size`` (e.g. '4m') at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only_view(source, path):
    """``source`` seen read-only at ``path`` (a bind mount remounted ro)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(path))
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot remount a bind mount read-only here ({r.stderr.strip()})")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# ---------------------------------------------------------------------------------------------
# kill -9 while saving

SAVERS = """
import os, sys, torch
from fastgpt import checkpoint
path, count = sys.argv[1], int(sys.argv[2])
w = torch.zeros(256, 1024)
pids = []
for me in range(1, count + 1):  # forked, so torch is imported once
    pid = os.fork()
    if pid == 0:
        n = 0
        while True:
            n += 1
            w.fill_(me * 100000 + n)
            checkpoint.save({"model": {"w": w}, "model_args": {}, "writer": me, "n": n}, path)
    pids.append(pid)
print(*pids, flush=True)
while pids:  # reap each saver as it dies (a zombie would count as alive) and report how it died
    pid, status = os.wait()
    print(pid, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status), flush=True)
    pids.remove(pid)
"""


def _check_consistent(path):
    ckpt = checkpoint.load(str(path))
    assert torch.equal(ckpt["model"]["w"], torch.full((256, 1024), float(ckpt["writer"] * 100000 + ckpt["n"])))


def test_kill_9_while_saving_never_leaves_a_bad_checkpoint(tmp_path):
    """Four processes save one ckpt.pt in a loop and are killed with SIGKILL one by one at random
    moments: the file always loads whole, no saver breaks another's save (nor removes a live
    one's temporary), and the partial files of the dead ones are removed."""
    path = tmp_path / "ckpt.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    parent = subprocess.Popen([sys.executable, "-c", SAVERS, str(path), "4"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        savers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(savers) == 4
        rng, mid_save = random.Random(0), 0
        for victim in savers:
            while not path.exists():
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.3))
            os.kill(victim, signal.SIGKILL)
            mid_save += (tmp_path / f".ckpt.pt.tmp-{victim}").exists()
            pid, how = map(int, parent.stdout.readline().split())
            assert (pid, how) == (victim, signal.SIGKILL), f"saver {pid} died on its own (exit status {-how})"
            _check_consistent(path)
        assert mid_save >= 1, "no kill landed in the middle of a save"
        assert parent.wait(timeout=60) == 0
    finally:
        parent.kill()
        parent.wait()
    check_out_dir(str(tmp_path), Distributed())  # a training run's start clears what the last one left
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    _check_consistent(path)


# ---------------------------------------------------------------------------------------------
# damaged files


def test_damaged_checkpoint_is_refused_in_one_line(text_file, data_dir, trained, tmp_path):
    raw = bytearray((trained / "ckpt.pt").read_bytes())
    out = tmp_path / "run"
    out.mkdir()
    for f in ("log.csv", "eval.csv"):
        shutil.copy(trained / f, out / f)
    rng = random.Random(1)
    for _ in range(3):
        bad = bytearray(raw)
        bad[rng.randrange(len(raw) // 4, len(raw) - 1024)] ^= 1 << rng.randrange(8)  # inside the tensors' bytes
        (out / "ckpt.pt").write_bytes(bytes(bad))
        msg = error_of(tiny(text_file, data_dir, out, "--resume", iters=20))
        assert "is damaged" in msg and "integrity check" in msg and "backup" in msg, msg
        with pytest.raises(checkpoint.CheckpointError, match="is damaged"):  # every reader refuses it
            GPT.from_pretrained(out)
        assert (out / "ckpt.pt").read_bytes() == bytes(bad)


# ---------------------------------------------------------------------------------------------
# a full disk


def _fill(directory, leave):
    """Fill the file system of ``directory`` until only about ``leave`` bytes are free."""
    with open(directory / "filler", "wb") as f:
        block = b"\0" * (1 << 16)
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        f.truncate(max(0, f.tell() - leave))


def test_disk_full_at_a_save_keeps_the_previous_checkpoint(text_file, data_dir, tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "run"
        train(tiny(text_file, data_dir, out, iters=10))
        before = (out / "ckpt.pt").read_bytes()
        _fill(disk, leave=32 << 10)  # room for the logs' rows, not for a checkpoint
        msg = error_of(tiny(text_file, data_dir, out, "--resume", iters=20))
        assert msg == f"error: no space left on {out}: checkpoint not written; the previous one is intact"
        assert (out / "ckpt.pt").read_bytes() == before and checkpoint.load(str(out))["iter_num"] == 10
        assert not [f for f in os.listdir(out) if ".tmp-" in f]
        os.remove(disk / "filler")
        train(tiny(text_file, data_dir, out, "--resume", iters=20))  # room again: it goes on
        assert checkpoint.load(str(out))["iter_num"] == 20


# ---------------------------------------------------------------------------------------------
# read-only directories


def test_read_only_out_dir_is_refused_before_the_data_and_the_model(text_file, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("fastgpt.train.prepare", lambda *a, **k: pytest.fail("data prepared before out_dir was checked"))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        for out in (ro, ro / "run"):
            msg = error_of(tiny(text_file, data_dir, out))
            assert f"out_dir {out} is on a read-only file system" in msg and "--out_dir" in msg, msg


def test_read_only_data_dir(text_file, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:  # nothing cached there: refused before tokenizing
        msg = error_of(tiny(text_file, str(ro), tmp_path / "o"))
        assert f"data_dir {ro} is on a read-only file system" in msg and "--data_dir" in msg, msg
        assert not (tmp_path / "o").exists()
    cache = tmp_path / "cache"  # a read-only copy of a prepared cache is all a run needs
    train(tiny(text_file, str(cache), tmp_path / "first", iters=2))
    with read_only_view(cache, tmp_path / "ro-cache") as ro_cache:
        assert train(tiny(text_file, str(ro_cache), tmp_path / "second", iters=2))["iters"] == 2


# ---------------------------------------------------------------------------------------------
# divergence: NaN at an evaluation


def test_nan_at_an_evaluation_keeps_the_last_good_checkpoint(text_file, data_dir, tmp_path):
    """The issue's run: the first non-finite value appears at an evaluation, where
    always_save_checkpoint used to save those weights and call them 'the last good checkpoint'."""
    out = tmp_path / "div"
    msg = error_of(tiny(text_file, data_dir, out, "--learning_rate", "3e2", "--grad_clip", "0", "--warmup_iters", "0",
                        "--eval_interval", "1", iters=20))
    evals = list(csv.DictReader(open(out / "eval.csv")))
    first_bad = next(int(r["iter"]) for r in evals if not all(map(math.isfinite, (float(r["train_loss"]), float(r["val_loss"])))))
    assert f"evaluation at iteration {first_bad} gave train loss nan" in msg and "no checkpoint written" in msg
    assert f"last good checkpoint {out / 'ckpt.pt'} (iteration {first_bad - 1}) is kept" in msg
    ckpt = checkpoint.load(str(out))
    assert ckpt["iter_num"] == first_bad - 1 and math.isfinite(ckpt["best_val_loss"])
    states = [v for st in ckpt["optimizer"]["state"].values() for v in st.values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in [*ckpt["model"].values(), *states])
    model = checkpoint.model_from_checkpoint(ckpt)
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))[0]).all()


# ---------------------------------------------------------------------------------------------
# exact resume with the default (auto-tuned) CPU threads


def test_resume_is_exact_with_auto_tuned_threads(text_file, data_dir, tmp_path, monkeypatch):
    used = []
    real = ThreadTuner.threads_for

    def recording(self, k):
        used.append(real(self, k))
        return used[-1]

    monkeypatch.setattr(ThreadTuner, "threads_for", recording)
    auto = ("--threads", "0", "--dropout", "0.1")  # tuning every eval_interval = 10 iterations
    train(tiny(text_file, data_dir, tmp_path / "full", *auto, iters=30))
    train(tiny(text_file, data_dir, tmp_path / "part", *auto, iters=12))
    train(tiny(text_file, data_dir, tmp_path / "part", *auto, "--resume", iters=30))
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    full, part = ({r["iter"]: r["val_loss"] for r in csv.DictReader(open(tmp_path / run / "eval.csv"))} for run in ("full", "part"))
    assert list(full) == ["0", "10", "20", "30"] and all(part[it] == loss for it, loss in full.items())
    if cpu_cores() > 1:
        assert len(set(used)) > 1, "the tuner never changed the thread count: nothing was tested"
