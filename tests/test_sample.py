"""fastgpt.sample: sampling from a trained checkpoint, streaming, prompts, bad input."""
import io

import pytest

from fastgpt import sample as sample_mod
from fastgpt.sample import main, sample
from fastgpt.train import train

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nO Romeo, Romeo!\n" * 120


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    (root / "play.txt").write_text(TEXT)
    train(["--data", str(root / "play.txt"), "--data_dir", str(root / "cache"), "--out_dir", str(root / "run"),
           "--device", "cpu", "--threads", "1", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
           "--batch_size", "8", "--max_iters", "30", "--eval_interval", "30", "--eval_iters", "1", "--learning_rate", "1e-2",
           "--sample_chars", "0", "--progress", "false", "--plot", "false"])
    return str(root / "run")


def run(ckpt, **kw):
    out, err = io.StringIO(), io.StringIO()
    texts = sample(ckpt, out=out, err=err, **{"device": "cpu", **kw})
    return texts, out.getvalue(), err.getvalue()


def test_seeded_and_streamed(ckpt):
    a, out_a, _ = run(ckpt, prompt="ROMEO:", max_new_tokens=37, seed=7)
    b, out_b, _ = run(ckpt, prompt="ROMEO:", max_new_tokens=37, seed=7, stream=False)
    c, _, _ = run(ckpt, prompt="ROMEO:", max_new_tokens=37, seed=8)
    assert len(a[0]) == 37 and a == b and a != c
    assert out_a == out_b == "ROMEO:" + a[0] + "\n"
    assert set(a[0]) <= set(TEXT)


def test_stream_chunks_equal_one_call(ckpt, monkeypatch):
    monkeypatch.setattr(sample_mod, "STREAM_CHUNK", 1)
    one, _, _ = run(ckpt, max_new_tokens=20, seed=3)
    monkeypatch.setattr(sample_mod, "STREAM_CHUNK", 64)
    assert run(ckpt, max_new_tokens=20, seed=3)[0] == one


def test_options(ckpt):
    texts, out, _ = run(ckpt, prompt="JULIET:", max_new_tokens=5, num_samples=3, temperature=0.5, top_k=3, seed=1)
    assert len(texts) == 3 and out.count("---------------") == 2 and all(len(t) == 5 for t in texts)
    assert run(ckpt, max_new_tokens=0)[0] == [""]


def test_long_prompt_is_cropped_with_notice(ckpt):
    texts, out, err = run(ckpt, prompt="O Romeo, Romeo! " * 4, max_new_tokens=4)
    assert "the prompt is 64 tokens, longer than the model's context of 16; keeping its last 16 tokens" in err
    assert len(texts[0]) == 4


def test_cli_prompt_file_and_errors(ckpt, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("ROMEO:\n")
    main(["--ckpt", ckpt + "/ckpt.pt", "--prompt_file", str(tmp_path / "p.txt"), "--max_new_tokens", "10"])
    assert capsys.readouterr().out.startswith("ROMEO:\n")
    for argv, expected in [
        (["--ckpt", ckpt, "--prompt", "ROMEO: \u00e9"], "not in the vocabulary"),
        (["--ckpt", str(tmp_path / "none")], "not a local path"),
        (["--ckpt", ckpt, "--prompt_file", str(tmp_path / "missing.txt")], "cannot be read"),
        (["--ckpt", ckpt, "--device", "cuda:9"], "does not exist"),
        (["--ckpt", ckpt, "--temperature", "0"], "must be > 0"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert str(e.value.code).startswith("error: ") and expected in str(e.value.code), (argv, e.value.code)
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit, match="corrupt or truncated"):
        main(["--ckpt", str(tmp_path / "bad.pt")])


def test_threads(ckpt, monkeypatch):
    import torch

    seen = []
    real = sample_mod._generate
    monkeypatch.setattr(sample_mod, "_generate", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    run(ckpt, max_new_tokens=2)
    run(ckpt, max_new_tokens=2, threads=2)
    assert seen == [1, 2]  # a small model decodes on one thread by default
    assert torch.get_num_threads() == before
    with pytest.raises(sample_mod.DataError, match="--threads must be >= 0"):
        run(ckpt, threads=-1)


def test_top_p(ckpt):
    texts, _, _ = run(ckpt, prompt="ROMEO:", max_new_tokens=12, top_p=0.5, seed=2)
    assert len(texts[0]) == 12
    with pytest.raises(sample_mod.DataError, match="top_p"):
        run(ckpt, top_p=1.5)


def test_closed_pipe_and_ctrl_c_end_quietly(ckpt):
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = f"{sys.executable} -m fastgpt.sample --ckpt {ckpt} --max_new_tokens 3000 --device cpu | head -c 20"
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
    assert len(r.stdout) == 20 and r.stderr == "", r.stderr
    p = subprocess.Popen([sys.executable, "-m", "fastgpt.sample", "--ckpt", ckpt, "--max_new_tokens", "100000", "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.read(10)  # generating by now
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
