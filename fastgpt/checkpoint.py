"""Checkpoints: atomic saves, careful loads, and a GPT rebuilt from a checkpoint.

The file is nanoGPT's ``ckpt.pt`` layout (``model``, ``optimizer``, ``model_args``,
``iter_num``, ``best_val_loss``, ``config``) plus fastgpt's resume state (``scaler``, ``rng``,
``meta``: the tokenizer). nanoGPT's sample.py reads it, and ``GPT.from_pretrained`` reads
nanoGPT's.
"""
import os

import torch

from fastgpt._io import atomic_write
from fastgpt.model import GPT, GPTConfig, clean_state_dict

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


class CheckpointError(ValueError):
    """A missing, corrupt, truncated or foreign checkpoint. The message names the fix."""


def save(obj, path):
    """torch.save through a temporary file and a rename: a crash or Ctrl-C mid-write leaves the
    previous checkpoint intact, never a truncated one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def resolve(path):
    """A checkpoint file from a file or a directory holding ckpt.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found; train one with python -m fastgpt.train or pass the path to a ckpt.pt")
    return path


def load(path, map_location="cpu"):
    """The checkpoint dict at ``path`` (a file or a directory with ckpt.pt), checked."""
    path = resolve(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); delete it and retrain, or restore it from a backup")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason}); delete it and retrain, "
                              f"or restore it from a backup") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a fastgpt/nanoGPT checkpoint (no 'model' and 'model_args'); "
                              f"for Hugging Face weights use GPT.from_pretrained(directory)")
    return ckpt


def check_model_args(ckpt, wanted, path, hint="drop those settings, or train a new model in another --out_dir"):
    """Raise if ``wanted`` (model config values) contradicts the checkpoint's architecture."""
    args = ckpt["model_args"]
    diff = [f"{k}={wanted[k]!r} (checkpoint: {args[k]!r})" for k in wanted if k in args and args[k] != wanted[k]]
    if diff:
        raise CheckpointError(f"checkpoint {path} is a different architecture: asked for {', '.join(diff)}; {hint}")


def model_from_checkpoint(ckpt, path="checkpoint", **overrides):
    """A GPT built from ``model_args`` with the checkpoint's weights loaded.

    overrides: GPTConfig fields that do not change the weights' shapes (dropout, backend).
    """
    args = {k: v for k, v in ckpt["model_args"].items() if k in GPTConfig.__dataclass_fields__}
    try:
        config = GPTConfig(**{**args, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has model_args this GPT cannot build ({e}); it is from another architecture") from None
    model = GPT(config)
    state = clean_state_dict(ckpt["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:200]
        raise CheckpointError(f"checkpoint {path} does not fit a GPT with {args} ({detail}); it is from another "
                              f"architecture: use a fastgpt/nanoGPT GPT checkpoint") from None
    return model
