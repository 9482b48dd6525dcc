"""fastgpt.checkpoint: atomic saves, checked loads, the resume policy, foreign files."""
import errno
import os
import subprocess
import sys

import pytest
import torch

from fastgpt import _io, checkpoint
from helpers import error_of, tiny


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}, "model_args": {}}, str(path))
    before = path.read_bytes()

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"model": {"w": torch.zeros(3)}, "model_args": {}}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_or_truncated_checkpoint(text_file, data_dir, trained, tmp_path, damage):
    out = tmp_path / "bad"
    out.mkdir()
    good = (trained / "ckpt.pt").read_bytes()
    bad = {"garbage": b"not a checkpoint at all" * 10, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    (out / "ckpt.pt").write_bytes(bad)
    msg = error_of(tiny(text_file, data_dir, out, "--resume", iters=20))
    assert ("corrupt or truncated" in msg or "is empty" in msg) and "retrain" in msg
    assert (out / "ckpt.pt").read_bytes() == bad


def test_checkpoint_from_another_architecture(text_file, data_dir, trained, tmp_path):
    msg = error_of(tiny(text_file, data_dir, trained, "--resume", "--n_layer", "2", iters=20))
    assert "different architecture" in msg and "n_layer=2" in msg
    # weights that do not fit their model_args (e.g. another model's state dict)
    ckpt = checkpoint.load(str(trained))
    ckpt["model"] = {"encoder.layers.0.weight": torch.zeros(2, 2)}
    checkpoint.save(ckpt, str(tmp_path / "other.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="another architecture"):
        checkpoint.model_from_checkpoint(checkpoint.load(str(tmp_path / "other.pt")), "other.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a fastgpt/nanoGPT checkpoint"):
        checkpoint.load(str(tmp_path / "foreign.pt"))


def test_existing_checkpoint_is_not_overwritten(text_file, data_dir, trained):
    before = (trained / "ckpt.pt").read_bytes()
    msg = error_of(tiny(text_file, data_dir, trained, iters=10))
    assert "already exists" in msg and "--resume" in msg and "--overwrite" in msg
    assert (trained / "ckpt.pt").read_bytes() == before


def test_resume_without_checkpoint(text_file, data_dir, tmp_path):
    msg = error_of(tiny(text_file, data_dir, tmp_path / "none", "--resume"))
    assert "no checkpoint" in msg


def test_resume_policy_merges_saved_and_explicit_settings(trained):
    saved = checkpoint.load(str(trained))["config"]
    settings = {**saved, "max_iters": 99, "learning_rate": 1.0}
    merged, ckpt = checkpoint.start_or_resume(settings, {"max_iters": 99}, str(trained), resume=True, overwrite=False, eval_only=False)
    assert ckpt["iter_num"] == 10
    assert merged["max_iters"] == 99  # explicit wins
    assert merged["learning_rate"] == saved["learning_rate"]  # the saved run's, not this command's default
    with pytest.raises(checkpoint.CheckpointError, match="was trained on data="):
        checkpoint.start_or_resume({**settings, "data": "other.txt"}, {"data": "other.txt"}, str(trained), True, False, False)


def test_clean_state_dict_maps_compiled_and_old_nanogpt_keys():
    sd = {"_orig_mod.transformer.h.0.attn.c_attn.bias": 1, "_orig_mod.transformer.h.0.attn.bias": 2,
          "transformer.h.1.attn.masked_bias": 3, "lm_head.weight": 4}
    assert checkpoint.clean_state_dict(sd) == {"transformer.h.0.attn.c_attn.bias": 1, "lm_head.weight": 4}


# ---- integrity: a changed byte is refused, never loaded


def _small_checkpoint(path):
    obj = {"model": {"w": torch.arange(24, dtype=torch.float32).view(4, 6)}, "model_args": {"n_layer": 1}, "iter_num": 3}
    checkpoint.save(obj, str(path))
    return obj


def test_flipped_byte_anywhere_is_refused_or_harmless(tmp_path):
    good = tmp_path / "ckpt.pt"
    obj = _small_checkpoint(good)
    raw = good.read_bytes()
    bad = tmp_path / "bad.pt"
    refused = []
    for i in range(len(raw)):
        bad.write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :])
        try:
            ckpt = checkpoint.load(str(bad))
        except checkpoint.CheckpointError as e:
            assert str(bad) in str(e) and ("damaged" in str(e) or "corrupt" in str(e)), e
            refused.append(i)
            continue
        # a byte no check covers (zip padding, unused header fields) must not change the contents
        assert torch.equal(ckpt["model"]["w"], obj["model"]["w"]) and ckpt["iter_num"] == 3, i
    data = raw.index(obj["model"]["w"].numpy().tobytes())
    assert set(range(data, data + 96)) <= set(refused)  # every byte of the weights is covered


def test_integrity_check_names_the_damaged_part(tmp_path):
    path = tmp_path / "ckpt.pt"
    obj = _small_checkpoint(path)
    raw = bytearray(path.read_bytes())
    raw[raw.index(obj["model"]["w"].numpy().tobytes()) + 5] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match=r"'archive/data/0' fails its integrity check"):
        checkpoint.load(str(path))


def test_files_without_crcs_still_load(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"model": {"w": torch.ones(3)}, "model_args": {}}, tmp_path / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(checkpoint.load(str(tmp_path / "nocrc.pt"))["model"]["w"], torch.ones(3))


# ---- disk trouble while saving


class _FullDisk:
    """A file that accepts ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "ckpt.pt"
    _small_checkpoint(path)
    before = path.read_bytes()
    if where == "write":
        monkeypatch.setattr("fastgpt._io.open", lambda p, mode: _FullDisk(open(p, mode), 700), raising=False)
    else:  # delayed allocation: the error surfaces at fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.save({"model": {"w": torch.zeros(1000)}, "model_args": {}}, str(path))
    assert str(e.value) == f"no space left on {tmp_path}: checkpoint not written; the previous one is intact"
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_unwritable_directory_while_saving(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("fastgpt._io.open", read_only, raising=False)
    msg = r"cannot write .*ckpt.pt \(Read-only file system\): checkpoint not written; there was no previous one"
    with pytest.raises(checkpoint.CheckpointError, match=msg):
        checkpoint.save({"model": {}}, str(tmp_path / "ckpt.pt"))


# ---- temporaries left by kill -9


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead, theirs = (tmp_path / f".ckpt.pt.tmp-{pid}" for pid in (_dead_pid(), live.pid))
        other, mine = (tmp_path / f".log.csv.tmp-{pid}" for pid in (_dead_pid(), os.getpid()))
        for f in (dead, theirs, other, mine):
            f.write_bytes(b"partial")
        _small_checkpoint(tmp_path / "ckpt.pt")
        assert not dead.exists()  # a dead process's temporary of the same file: gone
        assert theirs.exists() and other.exists()  # a live process's, or another file's: kept
        assert _io.remove_stale_temporaries(str(tmp_path)) == [str(other)]
        assert theirs.exists() and mine.exists()  # never a live process's, nor this one's
    finally:
        live.kill()
        live.wait()
