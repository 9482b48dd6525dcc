"""The README's commands all work: each line of its main-job block runs here, as written, with
tiny settings appended (later --key value wins) in a scratch directory. GPT-2's weights and BPE
are tiny ones made here; torchrun runs 2 gloo processes; the nanoGPT line needs a checkout."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from fastgpt import hf
from helpers import ROOT, tiny_gpt2, write_tiktoken_file

NANOGPT = os.environ.get("NANOGPT_DIR", "/work/nanogpt")
TINY_MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32"]
TINY_RUN = ["--block_size", "16", "--batch_size", "4", "--eval_interval", "4", "--eval_iters", "2", "--device", "cpu",
            "--threads", "1", "--sample_chars", "20", "--plot", "false", "--warmup_iters", "2"]


def readme_commands():
    """The command lines of the README's main-job bash block (continuations joined, comments dropped)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"## The main job.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def adapt(argv, text_file):
    """argv with this machine's stand-ins (python, the text, 2 processes) and tiny settings."""
    argv = [{"python": sys.executable, "my.txt": text_file}.get(a, a) for a in argv]
    argv = [a.replace("../nanoGPT", NANOGPT) for a in argv]
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        argv[argv.index("--nproc_per_node") + 1] = "2"
    module = argv[len(argv) - argv[::-1].index("-m")] if "-m" in argv else None  # the module after the last -m
    if module == "fastgpt.train" and "--help" not in argv:
        iters = argv[argv.index("--max_iters") + 1] if "--max_iters" in argv else "2000"
        argv += TINY_RUN + ["--max_iters", str(int(iters) // 250)]  # 500 -> 2, 1000 -> 4: resume still goes on
        if "--init_from" not in argv:
            argv += TINY_MODEL
    if module == "fastgpt.sample":
        argv += ["--max_new_tokens", "20", "--device", "cpu"]
    return argv


def test_the_readme_lists_every_command():
    firsts = [" ".join(a[:3]) for a in readme_commands()]
    for cmd in ("python -m fastgpt.train", "torchrun --standalone --nproc_per_node", "python -m fastgpt.sample",
                "python -m fastgpt.describe", "python -m fastgpt.hf"):
        assert any(f.startswith(cmd) for f in firsts), cmd
    flat = [" ".join(a) for a in readme_commands()]
    for piece in ("--resume", "--init_from gpt2", "configs/", "nanoGPT/config/", "--tokenizer gpt2"):
        assert any(piece in f for f in flat), piece


@pytest.mark.slow
def test_every_readme_command_runs(text_file, tmp_path):
    pytest.importorskip("tiktoken")
    hf.export(tiny_gpt2(), tmp_path / "gpt2-weights" / "gpt2")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "FASTGPT_GPT2_DIR": str(tmp_path / "gpt2-weights"),
           "FASTGPT_GPT2_BPE": write_tiktoken_file(tmp_path / "gpt2.tiktoken"), "HF_HOME": str(tmp_path / "hf_home")}
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(os.path.join(ROOT, "configs"), work / "configs")
    # the default job first: the sample and export lines read its out_dir
    runs = [[sys.executable, "-m", "fastgpt.train", *TINY_RUN, *TINY_MODEL, "--max_iters", "4"]]
    runs += [adapt(argv, text_file) for argv in readme_commands()]
    for argv in runs:
        if any(NANOGPT in a for a in argv) and not os.path.isdir(NANOGPT):
            continue  # the nanoGPT line needs a checkout
        r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (work / "hf" / "shakespeare" / "config.json").is_file() and (work / "out" / "ft" / "ckpt.pt").is_file()
