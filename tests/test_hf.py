"""fastgpt.hf: GPT-2 weights from/to local Hugging Face directories and nanoGPT checkpoints."""
import json
import struct

import pytest
import torch

from fastgpt import GPT, GPTConfig, hf
from fastgpt.checkpoint import CheckpointError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def tiny(bias=True):
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=12, vocab_size=50, bias=bias)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a missed transpose or key shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def logits(model, seed=1):
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx, idx)[0]


def write_hf_by_hand(model, path, fmt="safetensors", prefix=""):
    """A GPT-2 directory as Hugging Face writes it: Conv1D (in, out) weights, HF key names, the
    old causal-mask buffers, no lm_head (tied); written without fastgpt.hf's exporter."""
    path.mkdir()
    c = model.config
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = prefix + k[len("transformer."):]
        sd[name] = v.t().contiguous() if k.endswith(CONV1D) else v.clone()
    for i in range(c.n_layer):
        sd[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(c.block_size, c.block_size)).view(1, 1, c.block_size, c.block_size)
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": c.n_layer,
                                                  "n_head": c.n_head, "n_embd": c.n_embd, "n_positions": c.block_size,
                                                  "vocab_size": c.vocab_size, "activation_function": "gelu_new"}))
    if fmt == "bin":
        torch.save(sd, path / "pytorch_model.bin")
        return
    header, blobs, off = {}, [], 0
    for k, v in sd.items():
        b = v.numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@pytest.mark.parametrize("fmt,prefix", [("safetensors", ""), ("bin", "transformer.")])
def test_import_hugging_face_directory(tmp_path, fmt, prefix):
    model = tiny()
    write_hf_by_hand(model, tmp_path / "gpt2", fmt, prefix)
    loaded = GPT.from_pretrained(tmp_path / "gpt2")
    assert loaded.config.n_layer == 2 and loaded.config.bias and loaded.config.block_size == 12
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(logits(loaded.eval()), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("safetensors", [True, False])
def test_export_round_trip(tmp_path, bias, safetensors):
    model = tiny(bias)
    hf.export(model, tmp_path / "out", safetensors=safetensors)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["n_positions"] == 12 and cfg["activation_function"] == "gelu"
    weights = (hf.read_safetensors(tmp_path / "out" / "model.safetensors") if safetensors
               else torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True))
    assert weights["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # Conv1D layout
    assert "lm_head.weight" not in weights and "transformer.h.1.mlp.c_fc.bias" in weights
    back = GPT.from_pretrained(tmp_path / "out", dropout=0.0).eval()
    torch.testing.assert_close(logits(back), logits(model), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="already exists"):
        hf.export(model, tmp_path / "out", safetensors=safetensors)


def test_safetensors_format(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
               "c": torch.ones(3, dtype=torch.bfloat16), "empty": torch.zeros(0)}
    hf.write_safetensors(tensors, tmp_path / "t.safetensors", {"format": "pt"})
    raw = (tmp_path / "t.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert n % 8 == 0 and header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["__metadata__"] == {"format": "pt"}
    back = hf.read_safetensors(tmp_path / "t.safetensors")
    for k, v in tensors.items():
        assert torch.equal(back[k], v) and back[k].dtype == v.dtype
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 20])
    with pytest.raises(CheckpointError, match="truncated"):
        hf.read_safetensors(tmp_path / "cut.safetensors")


def test_nanogpt_checkpoint(tmp_path):
    model = tiny(bias=False)
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # saved from a torch.compile'd model
    args = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")}
    torch.save({"model": sd, "model_args": args, "iter_num": 5, "config": {"dataset": "x"}}, tmp_path / "ckpt.pt")
    for path in (tmp_path / "ckpt.pt", tmp_path):
        loaded = GPT.from_pretrained(path).eval()
        torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert GPT.from_pretrained(tmp_path, override_args={"dropout": 0.1}).config.dropout == 0.1


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        GPT.from_pretrained("gpt2-nonexistent-dir")
    with pytest.raises(CheckpointError, match="neither config.json"):
        GPT.from_pretrained(tmp_path)
    write_hf_by_hand(tiny(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_pretrained(tmp_path / "m")
    write_hf_by_hand(tiny(), tmp_path / "wrong")
    cfg = json.loads((tmp_path / "wrong" / "config.json").read_text())
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(CheckpointError, match="another architecture|does not match"):
        GPT.from_pretrained(tmp_path / "wrong")
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not GPT-2"):
        GPT.from_pretrained(tmp_path / "wrong")
    with pytest.raises(ValueError, match="only override dropout and backend"):
        GPT.from_pretrained(tmp_path / "m", n_layer=4)


def test_export_cli(tmp_path):
    model = tiny()
    args = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")}
    torch.save({"model": model.state_dict(), "model_args": args}, tmp_path / "ckpt.pt")
    hf.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "hf")])
    torch.testing.assert_close(logits(GPT.from_pretrained(tmp_path / "hf").eval()), logits(model), rtol=0, atol=0)
    with pytest.raises(SystemExit, match="already exists"):
        hf.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "hf")])
