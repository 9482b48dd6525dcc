"""init_from: fine-tuning from pretrained weights (a Hugging Face directory, a GPT-2 name found
locally, a fastgpt or nanoGPT ckpt.pt), with GPT-2's BPE from local files; sampling from the same
sources. The weights and the tokenizer are tiny ones made here: nothing is downloaded."""
import contextlib
import io
import types

import pytest
import torch

from fastgpt import GPT, checkpoint, hf
from fastgpt.config import TrainConfig
from fastgpt.data import prepare
from fastgpt.sample import sample
from fastgpt.train import evaluate, train
from helpers import error_of, tiny, tiny_gpt2, write_tiktoken_file, write_vocab_json

pytest.importorskip("tiktoken")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No GPT-2 files anywhere but where a test puts them."""
    for var in ("FASTGPT_GPT2_BPE", "FASTGPT_GPT2_DIR", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken_cache"))


@pytest.fixture
def hf_dir(tmp_path, offline):
    """A Hugging Face GPT-2 directory (fastgpt.hf.export of a tiny model, context 32) holding its
    tokenizer's vocab.json; returns (directory, the model)."""
    model = tiny_gpt2()
    path = tmp_path / "tiny-gpt2"
    hf.export(model, path)
    write_vocab_json(path)
    return path, model


def _eval_loss(model, data, block_size, tmp_path):
    cfg = TrainConfig(block_size=block_size, batch_size=4, eval_iters=2)
    rt = types.SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext())
    return evaluate(model, data, cfg, rt)["val"]


def test_finetune_from_a_hugging_face_directory(text_file, tmp_path, hf_dir, capsys):
    path, original = hf_dir
    out, cache = tmp_path / "ft", str(tmp_path / "cache")
    train(tiny(text_file, cache, out, "--init_from", str(path), "--block_size", "16", "--learning_rate", "1e-4", iters=6))
    assert "fine-tuning" in capsys.readouterr().out
    ckpt = checkpoint.load(str(out))
    assert ckpt["model_args"]["block_size"] == 16 and ckpt["model_args"]["vocab_size"] == 50257 and ckpt["model_args"]["bias"]
    assert ckpt["meta"]["tokenizer"] == "gpt2" and ckpt["meta"]["bpe"] == str(path)  # the directory's own vocab.json
    # started from the weights (cropped to 16 positions): six small steps away from them
    for name, w in original.state_dict().items():
        w = w[:16] if name == "transformer.wpe.weight" else w
        assert (ckpt["model"][name] - w).abs().max() < 0.01, name
    # iteration 0 evaluated the pretrained model itself
    data = prepare(text_file, "gpt2", cache, verbose=False, bpe=str(path))
    cropped = GPT.from_pretrained(path)
    cropped.crop_block_size(16)
    first = open(out / "eval.csv").read().splitlines()[1].split(",")
    assert float(first[2]) == pytest.approx(_eval_loss(cropped.eval(), data, 16, tmp_path), abs=1e-6)
    # sampling takes the same sources
    for source in (str(path), str(out)):
        texts = sample(source, prompt="the king", max_new_tokens=6, device="cpu", out=io.StringIO(), err=io.StringIO())
        assert isinstance(texts[0], str) and texts[0]


def test_finetune_from_a_gpt2_name_found_locally(text_file, tmp_path, offline, monkeypatch):
    monkeypatch.setenv("FASTGPT_GPT2_DIR", str(tmp_path / "weights"))
    msg = error_of(tiny(text_file, str(tmp_path / "cache"), tmp_path / "none", "--init_from", "gpt2-medium"))
    for piece in ("'gpt2-medium' are not on this machine", "nothing is downloaded", str(tmp_path / "weights" / "gpt2-medium"),
                  "FASTGPT_GPT2_DIR"):
        assert piece in msg, msg
    hf.export(tiny_gpt2(), tmp_path / "weights" / "gpt2")
    monkeypatch.setenv("FASTGPT_GPT2_BPE", write_tiktoken_file(tmp_path / "gpt2.tiktoken"))
    summary = train(tiny(text_file, str(tmp_path / "cache"), tmp_path / "ft", "--init_from", "gpt2", iters=2))
    assert summary["config"]["init_from"] == "gpt2" and summary["config"]["block_size"] == 16


def test_finetune_refuses_what_contradicts_the_weights(text_file, tmp_path, hf_dir):
    path, _ = hf_dir
    cache = str(tmp_path / "cache")
    msg = error_of(tiny(text_file, cache, tmp_path / "a", "--init_from", str(path), "--n_embd", "64"))
    assert "fixes n_embd=64 (the weights: 32)" in msg
    msg = error_of(tiny(text_file, cache, tmp_path / "b", "--init_from", str(path), "--block_size", "64"))
    assert "block_size 64 is longer than the context" in msg and "(32)" in msg
    msg = error_of(tiny(text_file, cache, tmp_path / "c", "--init_from", str(path), "--tokenizer", "char"))
    assert "tokenizer='char' (the weights: 'gpt2')" in msg


def test_gpt2_tokenizer_missing_names_the_files(text_file, tmp_path, offline):
    hf.export(tiny_gpt2(), tmp_path / "no-vocab")  # weights without vocab.json, and no FASTGPT_GPT2_BPE
    msg = error_of(tiny(text_file, str(tmp_path / "cache"), tmp_path / "o", "--init_from", str(tmp_path / "no-vocab")))
    assert "nothing is downloaded" in msg and "FASTGPT_GPT2_BPE" in msg and "FASTGPT_GPT2_DIR" in msg


def test_finetune_a_char_checkpoint(text_file, data_dir, trained, tmp_path):
    """A fastgpt ckpt.pt as init_from: its tokenizer with it; other characters are refused."""
    summary = train(tiny(text_file, data_dir, tmp_path / "more", "--init_from", str(trained / "ckpt.pt"), iters=3))
    assert summary["iters"] == 3
    base = checkpoint.load(str(trained))["model"]["transformer.wte.weight"]
    assert (checkpoint.load(str(tmp_path / "more"))["model"]["transformer.wte.weight"] - base).abs().max() < 0.01
    other = tmp_path / "other.txt"
    other.write_text("completely different characters: 0123456789 XYZ\n" * 200)
    msg = error_of(tiny(str(other), data_dir, tmp_path / "o", "--init_from", str(trained)))
    assert "trained on other characters" in msg
