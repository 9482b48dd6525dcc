"""fastgpt.hf: GPT-2 weights from/to local Hugging Face directories and nanoGPT checkpoints."""
import json
import struct
import subprocess
import sys

import pytest
import torch

from fastgpt import GPT, GPTConfig, checkpoint, hf
from fastgpt.checkpoint import CheckpointError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def tiny(bias=True, gelu="none"):
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=12, vocab_size=50, bias=bias, gelu_approximate=gelu)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a missed transpose or key shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def logits(model, seed=1):
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx, idx)[0]


def write_hf_by_hand(model, path, fmt="safetensors", prefix="", config=None, extra=None, drop=()):
    """A GPT-2 directory as Hugging Face writes it: Conv1D (in, out) weights, HF key names, the
    old causal-mask buffers, no lm_head (tied); written without fastgpt.hf's exporter.
    config: config.json fields to add or change; extra: tensors to add; drop: names to leave out."""
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
    sd = {**{k: v for k, v in sd.items() if k not in drop}, **(extra or {})}
    activation = "gelu_new" if c.gelu_approximate == "tanh" else "gelu"
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": c.n_layer,
                                                  "n_head": c.n_head, "n_embd": c.n_embd, "n_positions": c.block_size,
                                                  "vocab_size": c.vocab_size, "activation_function": activation, **(config or {})}))
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
    assert header["__metadata__"]["format"] == "pt" and set(json.loads(header["__metadata__"]["fastgpt.crc32"])) == set(tensors)
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
    with pytest.raises(CheckpointError, match="config.json says n_layer=3 but the weights hold layers 0..1"):
        GPT.from_pretrained(tmp_path / "wrong")
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not GPT-2"):
        GPT.from_pretrained(tmp_path / "wrong")
    with pytest.raises(ValueError, match="only override dropout, backend and fused_loss"):
        GPT.from_pretrained(tmp_path / "m", n_layer=4)


def test_export_cli(tmp_path):
    model = tiny()
    args = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")}
    torch.save({"model": model.state_dict(), "model_args": args}, tmp_path / "ckpt.pt")
    hf.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "hf")])
    torch.testing.assert_close(logits(GPT.from_pretrained(tmp_path / "hf").eval()), logits(model), rtol=0, atol=0)
    with pytest.raises(SystemExit, match="already exists"):
        hf.main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "hf")])


# ---- an import computes what the directory describes, or refuses


@pytest.mark.parametrize("config_layers, weight_layers", [(2, 4), (4, 2)])
def test_layer_count_of_config_and_weights_must_agree(tmp_path, config_layers, weight_layers):
    model = GPT(GPTConfig(n_layer=weight_layers, n_head=2, n_embd=16, block_size=12, vocab_size=50))
    write_hf_by_hand(model, tmp_path / "m", config={"n_layer": config_layers})
    with pytest.raises(CheckpointError, match=rf"n_layer={config_layers} but the weights hold layers 0..{weight_layers - 1}"):
        GPT.from_pretrained(tmp_path / "m")


def test_every_weight_is_used_or_the_import_fails(tmp_path):
    write_hf_by_hand(tiny(), tmp_path / "extra", extra={"score.weight": torch.zeros(3, 16), "h.0.attn.rotary": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"holds weights a GPT-2 does not use: h.0.attn.rotary, score.weight \(2 tensors\)"):
        GPT.from_pretrained(tmp_path / "extra")
    write_hf_by_hand(tiny(), tmp_path / "missing", drop=("h.1.mlp.c_fc.bias",))
    with pytest.raises(CheckpointError, match=r"lacks h.1.mlp.c_fc.bias \(1 tensor\)"):
        GPT.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("field, value, match", [
    ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon=1e-06"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=true"),
    ("scale_attn_weights", False, "scale_attn_weights=false"),
    ("activation_function", "relu", "activation_function='relu'"),
    ("add_cross_attention", True, "add_cross_attention=true"),
    ("n_inner", 32, "n_inner=32"),
])
def test_config_fields_that_change_the_function_are_refused(tmp_path, field, value, match):
    write_hf_by_hand(tiny(), tmp_path / "m", config={field: value})
    with pytest.raises(CheckpointError, match=rf"config.json sets {match} .*another function"):
        GPT.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("config", [{"reorder_and_upcast_attn": True}, {"n_inner": 64}, {"n_inner": None}, {"layer_norm_epsilon": 1e-5}])
def test_config_fields_that_keep_the_function_are_accepted(tmp_path, config):
    model = tiny()
    write_hf_by_hand(model, tmp_path / "m", config=config)
    torch.testing.assert_close(logits(GPT.from_pretrained(tmp_path / "m").eval()), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"])
def test_tanh_gelu_is_honoured_and_exported_back(tmp_path, activation):
    model = tiny(gelu="tanh")
    write_hf_by_hand(model, tmp_path / "m", config={"activation_function": activation})
    loaded = GPT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.gelu_approximate == "tanh"
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert not torch.equal(logits(tiny(gelu="none")), logits(model))  # the two GELUs differ: it matters
    # a checkpoint keeps it (nanoGPT's model_args only name it when it is not nanoGPT's exact GELU)
    assert "gelu_approximate" not in checkpoint.model_args(tiny().config)
    ckpt = {"model": loaded.state_dict(), "model_args": checkpoint.model_args(loaded.config)}
    torch.testing.assert_close(logits(checkpoint.model_from_checkpoint(ckpt).eval()), logits(model), rtol=0, atol=0)
    hf.export(loaded, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["activation_function"] == "gelu_new"
    torch.testing.assert_close(logits(GPT.from_pretrained(tmp_path / "out").eval()), logits(model), rtol=0, atol=0)


def test_missing_activation_field_means_hugging_faces_default(tmp_path):
    write_hf_by_hand(tiny(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["activation_function"]  # GPT2Config's default: gelu_new
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert GPT.from_pretrained(tmp_path / "m").config.gelu_approximate == "tanh"


def test_untied_output_layer_is_refused(tmp_path):
    model = tiny()
    wte = model.transformer.wte.weight.detach()
    write_hf_by_hand(model, tmp_path / "tied", extra={"lm_head.weight": wte.clone()})
    torch.testing.assert_close(logits(GPT.from_pretrained(tmp_path / "tied").eval()), logits(model), rtol=0, atol=0)
    write_hf_by_hand(model, tmp_path / "untied", extra={"lm_head.weight": wte + 1})
    with pytest.raises(CheckpointError, match="lm_head.weight differs from the token embedding"):
        GPT.from_pretrained(tmp_path / "untied")
    write_hf_by_hand(model, tmp_path / "nohead", config={"tie_word_embeddings": False})
    with pytest.raises(CheckpointError, match="tie_word_embeddings=false but the weights have no lm_head.weight"):
        GPT.from_pretrained(tmp_path / "nohead")


# ---- export


@pytest.mark.parametrize("vocab_size, eot", [(50, None), (50304, 50256)])
def test_exported_special_tokens_are_in_the_vocabulary(tmp_path, vocab_size, eot):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=vocab_size))
    hf.export(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["bos_token_id"] == eot and cfg["eos_token_id"] == eot


@pytest.mark.parametrize("bias", [True, False])
def test_exported_config_says_when_the_biases_are_zeros(tmp_path, bias):
    hf.export(tiny(bias), tmp_path / "out")
    note = json.loads((tmp_path / "out" / "config.json").read_text()).get("fastgpt_note", "")
    assert ("without biases" in note and "zero" in note) == (not bias)


# ---- integrity and memory


def test_damaged_weight_files_are_refused(tmp_path):
    model = tiny()
    hf.export(model, tmp_path / "st")
    path = tmp_path / "st" / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # the last byte of the last tensor
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        GPT.from_pretrained(tmp_path / "st")
    path.write_bytes(raw[: 8 + n + 100])
    with pytest.raises(CheckpointError, match="is truncated"):
        GPT.from_pretrained(tmp_path / "st")
    path.write_bytes(raw[:8] + raw[8 : 8 + n].replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1) + raw[8 + n :])
    with pytest.raises(CheckpointError, match="damaged"):
        GPT.from_pretrained(tmp_path / "st")
    hf.export(model, tmp_path / "bin", safetensors=False)
    path = tmp_path / "bin" / "pytorch_model.bin"
    raw = bytearray(path.read_bytes())
    raw[raw.index(model.transformer.wpe.weight.detach().numpy().tobytes()) + 3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        GPT.from_pretrained(tmp_path / "bin")


PEAK_RSS = """
import resource, sys, torch
from fastgpt import GPT
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
model = GPT.from_pretrained(sys.argv[1])
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(size, peak() - before)
"""


def test_safetensors_import_does_not_hold_two_copies_of_the_model(tmp_path):
    hf.export(GPT(GPTConfig(n_layer=4, n_head=8, n_embd=512, block_size=64, vocab_size=4096)), tmp_path / "m")
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    size, grown = map(int, out.stdout.split())
    assert size > 40e6 and grown < 1.5 * size, f"the import's peak grew {grown / size:.2f} x the model's {size / 1e6:.0f} MB"
