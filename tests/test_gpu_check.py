"""scripts/gpu_check.sh --dry-run: every stage of the GPU check on this CPU with tiny shapes (what
needs CUDA says so), its $OUT within what the device tool brings back, and scripts/harvest.py
on that output, into a scratch copy of the repository's README."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from fastgpt.kernels import tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED = {"env": "ok", "carry": "ok", "install": "skipped", "build": "skipped", "ceilings": "ok", "tune": "ok",
            "peers": "ok", "e2e": "ok", "backends": "ok", "tests": "ok", "qkv": "ok", "mlp": "ok", "memcheck": "skipped"}


def test_readme_shows_the_budgets_the_script_uses():
    with open(os.path.join(ROOT, "scripts", "gpu_check.sh")) as f:
        stages = re.search(r"^STAGES=\((.*)\)$", f.read(), re.M).group(1).split()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    budgets = [tuple(s.split(":")) for s in stages]
    assert sum(int(b) for _, b in budgets) <= 480  # the whole call in 8 minutes
    for name, budget in budgets:
        assert re.search(rf"^\| {name} \| {budget} \|", readme, re.M), f"README's stage table lacks {name} {budget}"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out / "summary.json") as f:
        return proc.stdout, out, json.load(f)


@pytest.mark.slow  # about 2-4 minutes on the 2-core machine
def test_every_stage_runs_or_says_why_not(dry_run):
    log, _, summary = dry_run
    assert re.search(r"total budget \d+ s", log) and re.search(r"\n   tune +85 s\n", log)  # the budget is printed first
    assert summary["dry_run"]
    assert {s["stage"]: s["status"] for s in summary["stages"]} == EXPECTED, summary["stages"]
    for s in summary["stages"]:
        if s["status"] == "skipped":
            assert "needs CUDA" in s["note"] or "dry run" in s["note"], s
            assert f"== {s['stage']}: skipped: {s['note']}" in log
    assert summary["tests"]["skipped"] == summary["tests"]["tests"] > 0  # on the CPU every GPU test skips
    assert summary["ceilings"]["matmul_flops"] > 0 and summary["machine"]["torch"]


@pytest.mark.slow
def test_out_is_what_the_device_tool_brings_back(dry_run):
    _, out, _ = dry_run
    files = sorted(os.listdir(out))
    assert files == sorted(["summary.json", "bench.json", "bench.md", "bench.png", "logs.tar.gz",
                            tuning.table_name("cpu (dry run)", (0, 0))])
    assert len(files) <= 8
    for name in files:
        path = out / name
        assert path.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", name) and path.stat().st_size < 16 << 20
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{s}.log" for s in ("env", "ceilings", "tune", "peers", "e2e", "tests", "qkv", "mlp")} <= names
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_table_and_benchmarks_came_back(dry_run):
    _, out, summary = dry_run
    with open(out / tuning.table_name("cpu (dry run)", (0, 0))) as f:
        table = json.load(f)
    assert tuning.validate(table) is None and table["provenance"]["dry_run"] and table["provenance"]["complete"]
    assert all(fam["entries"] for fam in table["kernels"].values())
    with open(out / "bench.json") as f:
        providers = {b["extra_info"]["provider"] for b in json.load(f)["benchmarks"]}
    assert {"triton", "sdpa-flash", "naive", "torch", "reference", "fused", "fastgpt_C"} <= providers
    skipped = " ".join(summary["peers"]["skipped"])
    for peer in ("sdpa-cudnn", "sdpa-efficient", "torch.compile", "liger", "reference+compile"):
        assert peer in skipped  # each peer the CPU cannot run is listed with its reason


@pytest.mark.slow
def test_harvest(dry_run, tmp_path):
    _, out, _ = dry_run
    harvest = [sys.executable, os.path.join(ROOT, "scripts", "harvest.py"), str(out), "--repo", str(tmp_path), "--date", "2026-01-02"]
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    refused = subprocess.run(harvest, capture_output=True, text=True)
    assert refused.returncode != 0 and "dry run" in refused.stderr
    done = subprocess.run(harvest + ["--allow-dry-run"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    name = tuning.table_name("cpu (dry run)", (0, 0))
    assert (tmp_path / "kernels" / "tuned" / name).read_bytes() == (out / name).read_bytes()
    for ext in ("json", "md", "png"):
        assert (tmp_path / "benchmarks" / "results" / f"2026-01-02-cpu-dry-run.{ext}").stat().st_size > 0
    readme = (tmp_path / "README.md").read_text()
    section = _inside(readme)
    assert "| attention case | triton ms | sdpa-flash ms (ratio) |" in section
    assert "Peers not measured, and why" in section and "Tuned configs: `kernels/tuned/" in section
    with open(os.path.join(ROOT, "README.md")) as f:
        original = f.read()
    assert readme.replace(section, "") == original.replace(_inside(original), "")  # only the section changed


def _inside(readme):
    return readme.split("<!-- gpu-results:start -->", 1)[1].split("<!-- gpu-results:end -->", 1)[0]
