"""GPT-2 weights in and out: local Hugging Face directories and nanoGPT/fastgpt checkpoints.

    model = GPT.from_pretrained("path/to/gpt2")          # config.json + model.safetensors or pytorch_model.bin
    model = GPT.from_pretrained("out/run1/ckpt.pt")      # a nanoGPT or fastgpt checkpoint (or its directory)
    fastgpt.hf.export(model, "hf/run1")                   # a GPT2LMHeadModel directory
    python -m fastgpt.hf --ckpt out/run1 --out hf/run1   # the same from the command line

Nothing is downloaded. Hugging Face's GPT-2 keeps its projections in ``Conv1D`` layers, whose
weights are the transpose of ``nn.Linear``'s: c_attn, attn.c_proj, c_fc and mlp.c_proj are
transposed on the way in and out. The safetensors format (an 8-byte header length, a JSON
header, raw little-endian bytes) is read and written here, so the ``safetensors`` package is
not needed; weights are read one tensor at a time into the model, so an import peaks at the
model's size plus its largest tensor, not twice the model.

An import computes what the directory describes, or refuses: every weight in it is used (the
old causal-mask buffers aside), or the error names the extra and missing ones; a config field
that changes the function is honoured (``activation_function``: ``gelu`` is the exact GELU,
``gelu_new``, ``gelu_pytorch_tanh`` and ``gelu_fast`` its tanh form, which OpenAI's GPT-2 was
trained with) or refused (``layer_norm_epsilon`` other than 1e-5, ``scale_attn_weights``
false, ``scale_attn_by_inverse_layer_idx``, ``add_cross_attention``, ``n_inner`` other than
4 x n_embd, an untied ``lm_head``). ``reorder_and_upcast_attn`` only changes rounding, and
fastgpt's attention keeps its scores and softmax in fp32 anyway. Missing fields take
Hugging Face's GPT2Config defaults.
"""
import argparse
import json
import os
import re
import struct
import sys
import zlib

import torch

from fastgpt import checkpoint, sources
from fastgpt._io import atomic_write
from fastgpt.checkpoint import CheckpointError
from fastgpt.data import GPT2_EOT
from fastgpt.model import GPT, GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_CRC_KEY = "fastgpt.crc32"  # __metadata__: {name: CRC-32 of its bytes}, written by write_safetensors


class SafetensorsFile:
    """A .safetensors file, its header checked; tensors are read one at a time (:meth:`read`).

    The header must describe tensors that tile the data section exactly (as the format
    requires), so truncation and a damaged header are refused. Files written by
    :func:`write_safetensors` also carry each tensor's CRC-32, checked as it is read.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        self.f = open(self.path, "rb")
        try:
            (n,) = struct.unpack("<Q", self.f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(self.f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            self.f.close()
            raise CheckpointError(f"{self.path} is not a valid safetensors file (bad header: {e}); re-download or re-export it") from None
        self.start = 8 + n
        meta = header.pop("__metadata__", None) or {}
        try:
            self.crcs = json.loads(meta[_CRC_KEY]) if _CRC_KEY in meta else {}
        except ValueError:
            self.crcs = None
        self.entries = {}
        spans = []
        for name, info in header.items():
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = [int(d) for d in info["shape"]]
                begin, end = (int(o) for o in info["data_offsets"])
                numel = 1
                for d in shape:
                    numel *= d
                ok = min(shape, default=0) >= 0 and 0 <= begin <= end and end - begin == numel * dtype.itemsize
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                self.f.close()
                raise CheckpointError(f"{self.path}: the header entry of {name!r} is damaged or of an unknown dtype; re-download or re-export it")
            self.entries[name] = (dtype, shape, begin, end)
            spans.append((begin, end))
        covered = 0
        for begin, end in sorted(spans):
            if begin != covered:
                break
            covered = end
        if covered != size - self.start or self.crcs is None:
            self.f.close()
            what = "truncated" if covered > size - self.start else "damaged (its header does not match its data)"
            raise CheckpointError(f"{self.path} is {what}; re-download or re-export it")

    def keys(self):
        return self.entries.keys()

    def shape(self, name):
        return tuple(self.entries[name][1])

    def read(self, name):
        """The tensor ``name``, read from the file now (a fresh CPU tensor)."""
        dtype, shape, begin, end = self.entries[name]
        buf = bytearray(end - begin)
        self.f.seek(self.start + begin)
        if self.f.readinto(buf) != len(buf):
            raise CheckpointError(f"{self.path} is truncated at {name!r}; re-download or re-export it")
        if name in self.crcs and zlib.crc32(buf) != self.crcs[name]:
            raise CheckpointError(f"{self.path} is damaged: {name!r} fails its CRC-32 check; re-export it or restore it from a backup")
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return t.reshape(shape)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_safetensors(path):
    """{name: tensor} from a .safetensors file (checked as :class:`SafetensorsFile` does)."""
    with SafetensorsFile(path) as f:
        return {name: f.read(name) for name in f.keys()}


def write_safetensors(tensors, path, metadata=None):
    """Write {name: tensor} as a .safetensors file (atomically: temporary file, then rename),
    with each tensor's CRC-32 in the metadata so that a later read can check it."""
    header, crcs, offset = {}, {}, 0
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        crcs[name] = zlib.crc32(_bytes(t))
        offset += nbytes
    header["__metadata__"] = {**{str(k): str(v) for k, v in (metadata or {}).items()}, _CRC_KEY: json.dumps(crcs)}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(h)) + h)
        for t in tensors.values():
            f.write(_bytes(t))

    atomic_write(path, write)


def _bytes(t):
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""


# ---------------------------------------------------------------------------------------------
# import


# activation_function -> GPTConfig.gelu_approximate
ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
HF_DEFAULTS = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024, "vocab_size": 50257,
               "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
               "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False, "n_inner": None,
               "tie_word_embeddings": True}


def _hf_config(path):
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{path}/config.json is not valid JSON ({e}); re-download the model directory") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}/config.json is not a JSON object; re-download the model directory")
    if cfg.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path} holds a {cfg.get('model_type')!r} model, not GPT-2; fastgpt loads GPT-2 (GPT2LMHeadModel) weights only")
    if "n_positions" not in cfg and "n_ctx" in cfg:  # the oldest GPT-2 configs name the context n_ctx only
        cfg["n_positions"] = cfg["n_ctx"]
    return {**HF_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or k == "n_inner"}}


def _refused_fields(hf):
    """The config fields whose function fastgpt's GPT cannot compute, each with the reason."""
    out = []
    if hf["activation_function"] not in ACTIVATIONS:
        out.append(f"activation_function={hf['activation_function']!r} (fastgpt's MLP computes GELU: {', '.join(ACTIVATIONS)})")
    if abs(float(hf["layer_norm_epsilon"]) - 1e-5) > 1e-12:
        out.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (fastgpt's LayerNorm uses GPT-2's 1e-5)")
    if not hf["scale_attn_weights"]:
        out.append("scale_attn_weights=false (fastgpt scales attention scores by 1/sqrt(head dim))")
    if hf["scale_attn_by_inverse_layer_idx"]:
        out.append("scale_attn_by_inverse_layer_idx=true (fastgpt does not scale attention by 1/(layer + 1))")
    if hf["add_cross_attention"]:
        out.append("add_cross_attention=true (a decoder-only GPT has no cross-attention)")
    if hf["n_inner"] not in (None, 4 * hf["n_embd"]):
        out.append(f"n_inner={hf['n_inner']} (fastgpt's MLP is 4 x n_embd = {4 * hf['n_embd']} wide)")
    return out


def _summary(names):
    """The names, or when there are many, grouped by layer ('h.2.*'); at most 8 items shown."""
    def natural(n):
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)]

    items = sorted(names, key=natural)
    if len(items) > 8:
        items = list(dict.fromkeys(f"{m.group(1)}.*" if m else n for n, m in ((n, re.match(r"(h\.\d+)\.", n)) for n in items)))
    shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
    return f"{shown} ({len(names)} tensor{'s' if len(names) != 1 else ''})"


class _TorchWeights:
    """pytorch_model.bin, integrity-checked, memory-mapped: tensors are paged in as read."""

    def __init__(self, path):
        checkpoint.verify(path)
        try:
            self.sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}); re-download or re-export it") from None
        if not isinstance(self.sd, dict):
            raise CheckpointError(f"{path} does not hold a state dict; re-download or re-export it")

    def keys(self):
        return self.sd.keys()

    def shape(self, name):
        return tuple(self.sd[name].shape)

    def read(self, name):
        return self.sd[name]

    def close(self):
        self.sd = None


def _open_weights(path):
    st, binf = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        return SafetensorsFile(st)
    if os.path.isfile(binf):
        return _TorchWeights(binf)
    raise CheckpointError(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin; copy the weights file there")


def load_hf(path, **overrides):
    """A GPT with the weights of a local Hugging Face GPT-2 directory: every weight used and
    every function-changing config field honoured, or CheckpointError saying which is not."""
    hf = _hf_config(path)
    refused = _refused_fields(hf)
    if refused:
        raise CheckpointError(f"{path}/config.json sets {'; '.join(refused)}: fastgpt's GPT would compute another function, "
                              f"so it does not load these weights")
    weights = _open_weights(path)
    try:
        return _load_weights(path, hf, weights, overrides)
    finally:
        weights.close()


def _load_weights(path, hf, weights, overrides):
    # HF names (with or without GPT2LMHeadModel's 'transformer.') -> file names; the causal-mask buffers are not weights
    names = {}
    for key in weights.keys():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if not (name.endswith(".attn.bias") or name.endswith(".attn.masked_bias")):
            names[name] = key
    layers = {int(m.group(1)) for m in (re.match(r"h\.(\d+)\.", n) for n in names) if m}
    if layers and layers != set(range(hf["n_layer"])):
        raise CheckpointError(f"{path}: config.json says n_layer={hf['n_layer']} but the weights hold layers "
                              f"{min(layers)}..{max(layers)} ({len(layers)} of them); fix n_layer in config.json")
    config = GPTConfig(**{
        "n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": hf["n_embd"], "block_size": hf["n_positions"],
        "vocab_size": hf["vocab_size"], "bias": "ln_f.bias" in names, "dropout": 0.0,
        "gelu_approximate": ACTIVATIONS[hf["activation_function"]], **overrides,
    })
    model = GPT(config)
    params = dict(model.named_parameters())
    wanted = {key[len("transformer."):] if key.startswith("transformer.") else key: key for key in params if key != "lm_head.weight"}
    missing = sorted(set(wanted) - set(names))
    extra = sorted(set(names) - set(wanted) - {"lm_head.weight"})
    if missing or extra:
        parts = ([f"lacks {_summary(missing)}"] if missing else []) + ([f"holds weights a GPT-2 does not use: {_summary(extra)}"] if extra else [])
        raise CheckpointError(f"{path} {' and '.join(parts)}; it is another architecture, or its config.json "
                              f"(n_layer={config.n_layer}, n_embd={config.n_embd}, bias={config.bias}) does not match its weights")
    with torch.no_grad():
        for name, key in wanted.items():
            w = weights.read(names[name])
            if any(key.endswith(s) for s in CONV1D):
                w = w.t()
            if tuple(w.shape) != tuple(params[key].shape):
                raise CheckpointError(f"{path}: {names[name]} has shape {tuple(w.shape)}, expected {tuple(params[key].shape)}; "
                                      f"its config.json does not match its weights")
            params[key].copy_(w)
            del w  # one tensor at a time: the import peaks at the model plus its largest tensor
        if "lm_head.weight" in names:
            head = weights.read(names["lm_head.weight"])
            if tuple(head.shape) != tuple(model.lm_head.weight.shape) or not torch.equal(head.to(model.lm_head.weight.dtype), model.lm_head.weight):
                raise CheckpointError(f"{path}: lm_head.weight differs from the token embedding wte.weight; fastgpt's GPT ties "
                                      f"them (as GPT-2 does), so it cannot compute this untied model")
        elif not hf["tie_word_embeddings"]:
            raise CheckpointError(f"{path}/config.json sets tie_word_embeddings=false but the weights have no lm_head.weight; "
                                  f"fastgpt's GPT ties the output layer to wte")
    return model


def from_pretrained(path, override_args=None, **overrides):
    """GPT-2 weights from a local Hugging Face directory, or a nanoGPT/fastgpt checkpoint.

    override_args (nanoGPT's name) / overrides: GPTConfig fields that keep the weights' shapes
    (dropout, backend, fused_loss).
    """
    overrides = {**(override_args or {}), **overrides}
    bad = [k for k in overrides if k not in ("dropout", "backend", "fused_loss")]
    if bad:
        raise ValueError(f"from_pretrained can only override dropout, backend and fused_loss, not {', '.join(bad)}")
    path = os.fspath(path)
    if not os.path.exists(path) and path in sources.GPT2_NAMES:  # nanoGPT's names, from local files
        found = sources.find_gpt2(path)
        if found is None:
            raise CheckpointError(sources.missing(path))
        path = found
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

    A model without biases gets zero biases (HF's GPT-2 always has them), which computes the
    same; config.json says so (``fastgpt_note``). bos/eos are GPT-2's <|endoftext|> when the
    vocabulary holds it, else null (a character-level model has no such token).
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
    eot = GPT2_EOT if cfg.vocab_size > GPT2_EOT else None  # GPT-2's <|endoftext|> is its bos and eos
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "n_embd": cfg.n_embd, "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "vocab_size": cfg.vocab_size,
        "activation_function": "gelu_new" if cfg.gelu_approximate == "tanh" else "gelu", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "initializer_range": 0.02,
        "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
        "torch_dtype": str(next(iter(sd.values())).dtype).replace("torch.", ""),
    }
    if not cfg.bias:
        hf_config["fastgpt_note"] = ("exported from a fastgpt model without biases (bias=False): every bias tensor in these "
                                     "weights is zero, which computes the same function")
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
