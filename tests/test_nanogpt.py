"""nanoGPT users: their config files run unchanged and their checkpoints resume or fine-tune.

The tests that read nanoGPT's own files (config/*.py, train.py) need a nanoGPT checkout
(NANOGPT_DIR, default /work/nanogpt) and skip without one; the others build nanoGPT's files
here, from its train.py's globals."""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgpt import GPT, GPTConfig, checkpoint, hf
from fastgpt.data import prepare
from fastgpt.train import train
from helpers import losses, tiny, tiny_gpt2, write_tiktoken_file

NANOGPT = os.environ.get("NANOGPT_DIR", "/work/nanogpt")
needs_nanogpt = pytest.mark.skipif(not os.path.isfile(os.path.join(NANOGPT, "train.py")), reason="needs a nanoGPT checkout (NANOGPT_DIR)")

# nanoGPT's train.py globals (its defaults), which it saves as a checkpoint's `config`
NANOGPT_GLOBALS = dict(
    out_dir="out", eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False, always_save_checkpoint=True,
    init_from="scratch", wandb_log=False, wandb_project="owt", wandb_run_name="gpt2", dataset="openwebtext",
    gradient_accumulation_steps=40, batch_size=12, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False,
    learning_rate=6e-4, max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0, decay_lr=True,
    warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5, backend="nccl", device="cuda", dtype="bfloat16", compile=True,
)


def nanogpt_checkpoint(path, vocab_size, iter_num=5):
    """A ckpt.pt as nanoGPT's train.py writes it (tiny()'s architecture): its config says
    backend='nccl', device='cuda', compile=True; the model was torch.compile'd."""
    model_args = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=vocab_size, dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    model(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))[1].backward()
    opt.step()
    config = {**NANOGPT_GLOBALS, **model_args, "dataset": "shakespeare_char", "gradient_accumulation_steps": 1, "batch_size": 4}
    os.makedirs(path, exist_ok=True)
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "optimizer": opt.state_dict(),
                "model_args": model_args, "iter_num": iter_num, "best_val_loss": torch.tensor(3.5), "config": config},
               os.path.join(path, "ckpt.pt"))
    return model


def test_resume_and_finetune_a_nanogpt_checkpoint(text_file, data_dir, tmp_path, capsys):
    vocab = prepare(text_file, "char", data_dir, verbose=False).vocab_size
    nanogpt_checkpoint(tmp_path / "run", vocab)
    summary = train(tiny(text_file, data_dir, tmp_path / "run", "--resume", iters=8))
    assert summary["iters"] == 8 and sorted(losses(tmp_path / "run")) == [5, 6, 7]
    assert summary["config"]["backend"] == "auto" and summary["config"]["device"] == "cpu"  # not 'nccl', not 'cuda'
    assert checkpoint.load(str(tmp_path / "run"))["format"] == "fastgpt-1"
    assert "RNG" in capsys.readouterr().out  # nanoGPT saves none: said, not silent
    nanogpt_checkpoint(tmp_path / "base", vocab)
    summary = train(tiny(text_file, data_dir, tmp_path / "ft", "--init_from", str(tmp_path / "base"), iters=2))
    assert summary["iters"] == 2


def _prepare_nanogpt_data(text_file, data_dir, root):
    """nanoGPT's data/<name>/{train,val}.bin + meta.pkl, from fastgpt's tokenization of text_file."""
    d = prepare(text_file, "char", data_dir, verbose=False)
    folder = root / "data" / "tiny_char"
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(os.path.join(d.path, f"{split}.bin"), folder / f"{split}.bin")
    chars = d.meta["chars"]
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return d


@needs_nanogpt
@pytest.mark.slow
def test_resume_a_checkpoint_from_nanogpts_train_py(text_file, data_dir, tmp_path):
    """Run nanoGPT's own train.py for a few iterations, then go on with fastgpt."""
    _prepare_nanogpt_data(text_file, data_dir, tmp_path)
    shutil.copy(os.path.join(NANOGPT, "configurator.py"), tmp_path)  # its train.py execs it from the working directory
    args = ["--dataset=tiny_char", "--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--block_size=16", "--batch_size=4", "--gradient_accumulation_steps=1", "--max_iters=4", "--eval_interval=4",
            "--eval_iters=2", "--warmup_iters=5", "--lr_decay_iters=40", "--out_dir=nano_out"]
    env = {**os.environ, "PYTHONPATH": NANOGPT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, os.path.join(NANOGPT, "train.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    saved = torch.load(tmp_path / "nano_out" / "ckpt.pt", weights_only=True)
    assert saved["config"]["backend"] == "nccl" and "format" not in saved
    summary = train(tiny(text_file, data_dir, tmp_path / "nano_out", "--resume", iters=8))
    assert summary["iters"] == 8 and summary["config"]["backend"] == "auto"


# ---- nanoGPT's own config files, run end to end (shrunk from the command line, as nanoGPT's README does on a CPU)

SHRINK = ("--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=2", "--max_iters=2",
          "--eval_interval=2", "--eval_iters=1", "--sample_chars=0", "--progress=False", "--plot=False")


@needs_nanogpt
def test_train_shakespeare_char_config(text_file, tmp_path):
    summary = train([os.path.join(NANOGPT, "config", "train_shakespeare_char.py"), *SHRINK, "--block_size=16", f"--data={text_file}",
                     f"--data_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'out'}"])
    assert summary["iters"] == 2 and summary["config"]["tokenizer"] == "char" and summary["config"]["dropout"] == 0.2


@needs_nanogpt
def test_finetune_shakespeare_and_train_gpt2_configs(text_file, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tiktoken")
    monkeypatch.setenv("FASTGPT_GPT2_BPE", write_tiktoken_file(tmp_path / "gpt2.tiktoken"))
    monkeypatch.setenv("FASTGPT_GPT2_DIR", str(tmp_path / "weights"))
    hf.export(tiny_gpt2(block_size=16), tmp_path / "weights" / "gpt2-xl")  # a stand-in for GPT-2 XL, same format
    common = [f"--data={text_file}", f"--data_dir={tmp_path / 'cache'}", "--device=cpu", "--sample_chars=0", "--progress=False",
              "--plot=False"]
    summary = train([os.path.join(NANOGPT, "config", "finetune_shakespeare.py"), *common, "--max_iters=2", "--eval_iters=1",
                     "--gradient_accumulation_steps=2", f"--out_dir={tmp_path / 'ft'}"])
    assert summary["config"]["init_from"] == "gpt2-xl" and summary["config"]["block_size"] == 16 and summary["iters"] == 2
    summary = train([os.path.join(NANOGPT, "config", "train_gpt2.py"), *SHRINK, "--block_size=16", "--gradient_accumulation_steps=2",
                     *common, f"--out_dir={tmp_path / 'gpt2'}"])
    assert summary["config"]["tokenizer"] == "gpt2" and summary["config"]["wandb_log"]
    out = capsys.readouterr().out
    assert "wandb_log is set but the wandb package is not installed" in out or "wandb" in sys.modules
    assert np.isfinite(summary["val_loss"])
