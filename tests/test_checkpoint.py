"""fastgpt.checkpoint: atomic saves, checked loads, the resume policy, foreign files."""
import os

import pytest
import torch

from fastgpt import checkpoint
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
