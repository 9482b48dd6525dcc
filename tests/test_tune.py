"""scripts/tune.py in dry-run mode (CPU, Triton interpreter, tiny shapes): its warm-up workers,
its table (valid, read back by the loader, every winner among the launcher's candidates) and
its time budget. The whole dry sweep runs in tests/test_gpu_check.py, inside the GPU check."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgpt.kernels import bias_gelu, tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRY = ("cpu (dry run)", (0, 0))


def sweep(tmp_path, *args):
    out = tmp_path / "tuned"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tune.py"), "--dry-run", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = out / tuning.table_name(*DRY)
    with open(path) as f:
        return json.load(f), proc.stdout, out


@pytest.fixture
def clean_tuning():
    tuning.clear_cache()
    yield
    tuning.clear_cache()


def test_dry_sweep_with_warm_up_workers(tmp_path, monkeypatch, clean_tuning):
    table, log, out = sweep(tmp_path, "--only", "bias_gelu", "--workers", "2")
    assert "warm-up shard 0/2" in log and "warm-up shard 1/2" in log
    assert tuning.validate(table) is None
    prov = table["provenance"]
    assert prov["dry_run"] and prov["complete"] and prov["points"] == {"done": 1, "total": 1}
    assert set(table["kernels"]) == {"bias_gelu.fwd", "bias_gelu.bwd"}
    monkeypatch.setenv("FASTGPT_TUNED_DIR", str(out))
    for kind in bias_gelu.TUNABLE:
        fam = table["kernels"][f"bias_gelu.{kind}"]
        assert fam["source"] == tuning.source_hash("bias_gelu")
        (key, entry), = fam["entries"].items()
        N = int(dict(kv.split("=") for kv in key.split(","))["N"])
        candidates = bias_gelu.config_candidates(kind, N)
        assert entry["config"] in candidates
        assert entry["ms"] == min(t for _, t in entry["timings"])  # the fastest, checked
        assert len(entry["timings"]) == 2 and entry["timings"][0][0] == candidates[0]
        # the loader hands the launchers exactly that config for the key the sweep used
        key_dict = bias_gelu.tuning_key(64, N, torch.float32, "none")
        assert tuning.key_string(key_dict) == key
        assert tuning.pick(f"bias_gelu.{kind}", DRY, key_dict, candidates) == entry["config"]


def test_spent_budget_leaves_a_valid_table(tmp_path):
    table, log, _ = sweep(tmp_path, "--only", "layer_norm", "--workers", "0", "--budget", "0")
    assert "budget spent after 0 of 1 points" in log
    assert tuning.validate(table) is None
    prov = table["provenance"]
    assert not prov["complete"] and prov["points"] == {"done": 0, "total": 1}
    assert all(not fam["entries"] for fam in table["kernels"].values())


def test_backends_dry_run_merges_its_choices_into_the_table(tmp_path, monkeypatch, clean_tuning):
    """--backends (here: the C++ twin against the reference, tiny shapes) adds a "backends" section
    to the table already in --out, tagged with this build's sources, each choice read back by the
    loader under the key the ops ask with."""
    from fastgpt.ops import _extension

    sweep(tmp_path, "--only", "bias_gelu", "--workers", "0")
    table, log, out = sweep(tmp_path, "--backends")
    assert tuning.validate(table) is None
    assert set(table["kernels"]) == {"bias_gelu.fwd", "bias_gelu.bwd"}  # the sweep's entries stay
    assert set(table["backends"]) == {"mlp", "linear_bias_gelu", "qkv_projection"}
    monkeypatch.setenv("FASTGPT_TUNED_DIR", str(out))
    x = torch.empty(64, 64)
    for op, choices in table["backends"].items():
        assert choices["source"] == _extension._C.sources_sha256()
        (key, entry), = choices["entries"].items()
        assert entry["backend"] in ("reference", "cuda") and set(entry["ms"]) == {"reference", "cuda"}
        assert entry["backend"] == ("cuda" if entry["ms"]["cuda"] < 0.97 * entry["ms"]["reference"] else "reference")
        want = {"dtype": torch.float32, "C": 64, "H": 1, "tokens": 64} if op == "qkv_projection" else _extension.fc_key(x, 256)
        assert key == tuning.key_string(want)
        assert tuning.backend_choice(op, DRY, want, _extension._C.sources_sha256()) == entry["backend"]
        assert f"{op} tokens=64 C=64 float32" in log
