"""GPT-2 weights in and out: local Hugging Face directories and nanoGPT/fastgpt checkpoints.

    model = GPT.from_pretrained("path/to/gpt2")          # config.json + model.safetensors or pytorch_model.bin
    model = GPT.from_pretrained("out/run1/ckpt.pt")      # a nanoGPT or fastgpt checkpoint (or its directory)
    fastgpt.hf.export(model, "hf/run1")                   # a GPT2LMHeadModel directory
    python -m fastgpt.hf --ckpt out/run1 --out hf/run1   # the same from the command line

Nothing is downloaded. Hugging Face's GPT-2 keeps its projections in ``Conv1D`` layers, whose
weights are the transpose of ``nn.Linear``'s: c_attn, attn.c_proj, c_fc and mlp.c_proj are
transposed on the way in and out. The safetensors format (an 8-byte header length, a JSON
header, raw little-endian bytes) is read and written here, so the ``safetensors`` package is
not needed. Exported configs say ``activation_function: "gelu"`` (exact erf), which is what
fastgpt computes; OpenAI's GPT-2 was trained with the tanh approximation (``gelu_new``), which
fastgpt, like nanoGPT, replaces by the exact GELU when it loads those weights.
"""
import argparse
import json
import os
import struct
import sys

import torch

from fastgpt import checkpoint
from fastgpt._io import atomic_write
from fastgpt.checkpoint import CheckpointError
from fastgpt.model import GPT, GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def read_safetensors(path):
    """{name: tensor} from a .safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
    except (struct.error, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not a valid safetensors file (bad header); re-download or re-export it") from None
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > len(data) or info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path} is truncated or holds an unknown dtype ({name}); re-download or re-export it")
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=_ST_DTYPES[info["dtype"]]) if end > begin else torch.empty(0, dtype=_ST_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


def write_safetensors(tensors, path, metadata=None):
    """Write {name: tensor} as a .safetensors file (atomically: temporary file, then rename)."""
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        b = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(h)) + h)
        for b in chunks:
            f.write(b)

    atomic_write(path, write)


def _hf_config(path):
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{path}/config.json is not valid JSON ({e}); re-download the model directory") from None
    if cfg.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path} holds a {cfg.get('model_type')!r} model, not GPT-2; fastgpt loads GPT-2 (GPT2LMHeadModel) weights only")
    return cfg


def load_hf(path, **overrides):
    """A GPT with the weights of a local Hugging Face GPT-2 directory."""
    hf = _hf_config(path)
    st, binf = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        sd = read_safetensors(st)
    elif os.path.isfile(binf):
        try:
            sd = torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{binf} is corrupt or truncated ({type(e).__name__}); re-download or re-export it") from None
    else:
        raise CheckpointError(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin; copy the weights file there")
    sd = checkpoint.clean_state_dict({k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in sd.items()})
    n_embd = hf.get("n_embd", 768)
    config = GPTConfig(**{
        "n_layer": hf.get("n_layer", 12), "n_head": hf.get("n_head", 12), "n_embd": n_embd,
        "block_size": hf.get("n_positions", hf.get("n_ctx", 1024)), "vocab_size": hf.get("vocab_size", 50257),
        "bias": "ln_f.bias" in sd, "dropout": 0.0, **overrides,
    })
    model = GPT(config)
    target = model.state_dict()
    state = {}
    for key in target:
        src = key[len("transformer."):] if key.startswith("transformer.") else key
        if key == "lm_head.weight":
            src = "lm_head.weight" if "lm_head.weight" in sd else "wte.weight"
        if src not in sd:
            raise CheckpointError(f"{path} lacks {src!r} for a {config.n_layer}-layer GPT-2; it is from another architecture "
                                  f"or its config.json does not match its weights")
        w = sd[src]
        if any(key.endswith(s) for s in CONV1D):
            w = w.t()
        if w.shape != target[key].shape:
            raise CheckpointError(f"{path}: {src} has shape {tuple(w.shape)}, expected {tuple(target[key].shape)}; "
                                  f"its config.json does not match its weights")
        state[key] = w
    model.load_state_dict(state)
    return model


def from_pretrained(path, override_args=None, **overrides):
    """GPT-2 weights from a local Hugging Face directory, or a nanoGPT/fastgpt checkpoint.

    override_args (nanoGPT's name) / overrides: GPTConfig fields that keep the weights' shapes
    (dropout, backend).
    """
    overrides = {**(override_args or {}), **overrides}
    bad = [k for k in overrides if k not in ("dropout", "backend")]
    if bad:
        raise ValueError(f"from_pretrained can only override dropout and backend, not {', '.join(bad)}")
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return load_hf(path, **overrides)
    if os.path.isfile(path) or (os.path.isdir(path) and os.path.isfile(os.path.join(path, "ckpt.pt"))):
        ckpt = checkpoint.load(path)
        return checkpoint.model_from_checkpoint(ckpt, checkpoint.resolve(path), **overrides)
    if not os.path.exists(path):
        raise CheckpointError(f"{path!r} is not a local path and nothing is downloaded; pass a Hugging Face GPT-2 directory "
                              f"(config.json + model.safetensors, e.g. a clone of huggingface.co/{path}) or a ckpt.pt")
    raise CheckpointError(f"{path} holds neither config.json (Hugging Face) nor ckpt.pt (nanoGPT/fastgpt); pass one of those")


def export(model, out_dir, safetensors=True, overwrite=False):
    """Write ``model`` as a Hugging Face GPT2LMHeadModel directory (config.json + weights).

    A model without biases gets zero biases (HF's GPT-2 always has them), which computes the same.
    """
    weights = os.path.join(out_dir, "model.safetensors" if safetensors else "pytorch_model.bin")
    for f in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(out_dir, f)) and not overwrite:
            raise CheckpointError(f"{os.path.join(out_dir, f)} already exists; choose another output directory or pass overwrite=True (--overwrite)")
    cfg = model.config
    sd = {}
    for key, w in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to wte
        if any(key.endswith(s) for s in CONV1D):
            w = w.t()
        sd[key] = w.detach().cpu().contiguous()
    if not cfg.bias:
        for key, w in list(sd.items()):
            if key.endswith(".weight") and (".ln_" in key or "ln_f" in key or any(key.endswith(s) for s in CONV1D)):
                out_features = w.shape[-1] if any(key.endswith(s) for s in CONV1D) else w.shape[0]
                sd[key[: -len("weight")] + "bias"] = torch.zeros(out_features, dtype=w.dtype)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "n_embd": cfg.n_embd, "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "vocab_size": cfg.vocab_size,
        "activation_function": "gelu", "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256,
        "tie_word_embeddings": True, "torch_dtype": str(next(iter(sd.values())).dtype).replace("torch.", ""),
    }
    os.makedirs(out_dir, exist_ok=True)
    if safetensors:
        write_safetensors(sd, weights, {"format": "pt"})
    else:
        checkpoint.save(sd, weights)
    atomic_write(os.path.join(out_dir, "config.json"), lambda f: f.write(json.dumps(hf_config, indent=2).encode()))
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a fastgpt/nanoGPT checkpoint as a Hugging Face GPT2LMHeadModel directory")
    p.add_argument("--ckpt", required=True, help="a ckpt.pt or the out_dir holding it")
    p.add_argument("--out", required=True, help="the directory to write config.json and the weights to")
    p.add_argument("--bin", action="store_true", help="write pytorch_model.bin instead of model.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    a = p.parse_args(argv)
    try:
        model = from_pretrained(a.ckpt)
        export(model, a.out, safetensors=not a.bin, overwrite=a.overwrite)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {a.out}/config.json and {'pytorch_model.bin' if a.bin else 'model.safetensors'}", file=sys.stderr)


if __name__ == "__main__":
    main()
