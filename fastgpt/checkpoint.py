"""Checkpoints: the format, atomic saves, careful loads, the resume policy, a GPT rebuilt.

The file is nanoGPT's ``ckpt.pt`` layout (``model``, ``optimizer``, ``model_args``,
``iter_num``, ``best_val_loss``, ``config``) plus fastgpt's resume state (``scaler``, ``rng``,
``meta``: the tokenizer, ``format``). nanoGPT's sample.py reads it, and ``GPT.from_pretrained``
reads nanoGPT's. Everything this project knows about that format is in this module: the model
arguments, the state-dict key mapping, what is saved and restored, and when a run resumes.
"""
import os
import zipfile

import torch

from fastgpt._io import DiskFullError, atomic_write
from fastgpt.config import saved_settings
from fastgpt.model import GPT, GPTConfig

FORMAT = "fastgpt-1"
# nanoGPT's model_args: the GPTConfig fields that fix the weights' shapes (and dropout).
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
_COMPILE_PREFIX = "_orig_mod."


class CheckpointError(ValueError):
    """A missing, corrupt, truncated or foreign checkpoint. The message names the fix."""


def clean_state_dict(state_dict):
    """Strip torch.compile's ``_orig_mod.`` prefix and drop nanoGPT's non-flash mask buffers
    (``attn.bias``: a causal mask, not a parameter, present only in old checkpoints)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_COMPILE_PREFIX):
            key = key[len(_COMPILE_PREFIX) :]
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue
        out[key] = value
    return out


def model_args(config):
    """The ``model_args`` entry for a GPTConfig: nanoGPT's keys, plus ``gelu_approximate`` only
    when it is not nanoGPT's exact GELU (nanoGPT then refuses the checkpoint instead of
    computing another function with it)."""
    args = {k: getattr(config, k) for k in MODEL_ARGS}
    if config.gelu_approximate != "none":
        args["gelu_approximate"] = config.gelu_approximate
    return args


# ---------------------------------------------------------------------------------------------
# files


def save(obj, path):
    """torch.save through a temporary file and a rename: a crash, Ctrl-C or kill -9 mid-write
    leaves the previous checkpoint intact, never a truncated one. A full disk or an unwritable
    directory raises CheckpointError, the previous checkpoint untouched."""
    previous = "the previous one is intact" if os.path.exists(path) else "there was no previous one"
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except DiskFullError:
        raise CheckpointError(f"no space left on {os.path.dirname(os.path.abspath(path))}: checkpoint not written; {previous}") from None
    except OSError as e:
        raise CheckpointError(f"cannot write {path} ({e.strerror or e}): checkpoint not written; {previous}") from None


def verify(path):
    """Raise CheckpointError unless every member of the zip file at ``path`` (torch.save's
    format) matches its stored CRC-32: a flipped bit anywhere in the data is refused. Streams the
    file once (about as long as reading it). Files without CRCs (torch.save with
    ``compute_crc32`` off) and pre-zip legacy files cannot be checked and pass."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            # torch.save stores every record uncompressed as a plain file; a member that says
            # otherwise (a flipped attribute bit makes torch's reader see a directory and load
            # zeros) is damage the CRCs do not cover.
            bad = next((m.filename for m in members if m.is_dir() or m.external_attr & 0x10 or m.compress_type or m.flag_bits & 1), None)
            if bad is None and any(m.CRC for m in members if m.file_size):
                bad = z.testzip()
    except Exception as e:  # zipfile raises many kinds on a damaged directory
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); delete it and retrain, "
                              f"or restore it from a backup") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its part {bad!r} fails its integrity check (a changed byte on disk "
                              f"or in transfer); restore it from a backup or retrain")


def resolve(path):
    """A checkpoint file from a file or a directory holding ckpt.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found; train one with python -m fastgpt.train or pass the path to a ckpt.pt")
    return path


def load(path, map_location="cpu"):
    """The checkpoint dict at ``path`` (a file or a directory with ckpt.pt), its integrity
    verified (:func:`verify`) before it is unpickled."""
    path = resolve(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); delete it and retrain, or restore it from a backup")
    verify(path)
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


# ---------------------------------------------------------------------------------------------
# models


def check_model_args(ckpt, wanted, path, hint="drop those settings, or train a new model in another --out_dir"):
    """Raise if ``wanted`` (model config values) contradicts the checkpoint's architecture."""
    args = ckpt["model_args"]
    diff = [f"{k}={wanted[k]!r} (checkpoint: {args[k]!r})" for k in wanted if k in args and args[k] != wanted[k]]
    if diff:
        raise CheckpointError(f"checkpoint {path} is a different architecture: asked for {', '.join(diff)}; {hint}")


def model_from_checkpoint(ckpt, path="checkpoint", **overrides):
    """A GPT built from ``model_args`` with the checkpoint's weights loaded.

    overrides: GPTConfig fields that do not change the weights' shapes (dropout, backend, fused_loss).
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


# ---------------------------------------------------------------------------------------------
# training runs: what is saved, what is restored, and when a run resumes


def training_checkpoint(model, optimizer, scaler, iter_num, best_val_loss, config, meta, rngs, evaluated=True):
    """The dict a training run saves. config: the run's settings (a plain dict); meta: the
    tokenizer; rngs: one {'torch', 'cuda'} RNG state per process; evaluated: whether iteration
    ``iter_num`` has been evaluated (False when an interruption saved before its evaluation)."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "model_args": model_args(model.config), "iter_num": iter_num, "best_val_loss": best_val_loss,
        "config": config, "meta": meta, "rng": rngs, "evaluated": evaluated, "format": FORMAT,
    }


def restore_training(ckpt, optimizer, scaler):
    """Load the optimizer and grad-scaler states; returns (iter_num, best_val_loss, rngs, evaluated)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["iter_num"]), float(ckpt.get("best_val_loss", float("inf"))), ckpt.get("rng") or [], evaluated(ckpt)


def evaluated(ckpt):
    """Whether the run was evaluated at the checkpoint's iteration (nanoGPT's and older fastgpt
    checkpoints are saved right after an evaluation)."""
    return bool(ckpt.get("evaluated", True))


def finished(ckpt, max_iters):
    """Whether the checkpoint's run has reached ``max_iters`` and evaluated there: nothing to do."""
    return int(ckpt["iter_num"]) >= max_iters and evaluated(ckpt)


def start_or_resume(settings, explicit, out_dir, resume, overwrite, eval_only):
    """The resume policy. Returns (settings, checkpoint or None).

    settings: the run's settings as a dict (preset, file and command line merged); explicit:
    the keys the user set. A run resumes when asked (``--resume``) or when it only evaluates an
    existing checkpoint. Resuming takes the saved settings, overridden by the explicit ones,
    and refuses explicit model or data settings that contradict the checkpoint. A new run
    never replaces an existing checkpoint unless ``overwrite`` says so.
    """
    path = os.path.join(out_dir, "ckpt.pt")
    if not (resume or (eval_only and os.path.isfile(path))):
        if os.path.exists(path) and not overwrite and not eval_only:
            raise CheckpointError(f"{path} already exists; pass --resume to continue that run, --overwrite to replace it, "
                                  f"or choose another --out_dir")
        return settings, None
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}; run without --resume to start, or pass the run's --out_dir")
    ckpt = load(path, map_location="cpu")
    saved = saved_settings(ckpt)
    wanted = {k: settings[k] for k in MODEL_ARGS if k in explicit and k in settings}
    check_model_args(ckpt, wanted, path, hint="resume without those settings, or start a new run in another --out_dir")
    for key in ("data", "tokenizer"):
        if key in explicit and key in saved and settings[key] != saved[key]:
            raise CheckpointError(f"checkpoint {path} was trained on {key}={saved[key]!r}, not {settings[key]!r}; "
                                  f"resume without --{key}, or start a new run in another --out_dir")
    merged = {**settings, **{k: v for k, v in saved.items() if k in settings}, **explicit, "out_dir": out_dir}
    return merged, ckpt
