"""Where pretrained GPT-2 weights and GPT-2's tokenizer are found on this machine: local files
only, nothing is ever downloaded.

A GPT-2 name (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, as nanoGPT's
``init_from`` takes them) is looked up in, in this order:

1. ``$FASTGPT_GPT2_DIR/<name>/`` (for example a clone of huggingface.co/openai-community/<name>);
2. the Hugging Face hub cache, where ``transformers`` leaves what it downloaded:
   ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, in
   ``models--openai-community--<name>/snapshots/*/`` and ``models--<name>/snapshots/*/``.

A directory counts when it holds ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``. The same directories' ``vocab.json`` (GPT-2's BPE vocabulary) serves the
GPT-2 tokenizer when ``FASTGPT_GPT2_BPE`` is not set (see ``fastgpt.data``).
"""
import glob
import os

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
BPE_FILES = ("encoder.json", "vocab.json")


def _hub_cache():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def candidates(name):
    """The directories searched for GPT-2 model ``name``, in order."""
    out = []
    if os.environ.get("FASTGPT_GPT2_DIR"):
        out.append(os.path.join(os.environ["FASTGPT_GPT2_DIR"], name))
    for repo in (f"models--openai-community--{name}", f"models--{name}"):
        out += sorted(glob.glob(os.path.join(_hub_cache(), repo, "snapshots", "*")))
    return out


def has_weights(path):
    return os.path.isfile(os.path.join(path, "config.json")) and any(os.path.isfile(os.path.join(path, w)) for w in WEIGHTS)


def find_gpt2(name):
    """The first directory holding GPT-2 model ``name``'s weights, or None."""
    return next((d for d in candidates(name) if has_weights(d)), None)


def missing(name):
    """What to do when GPT-2 model ``name`` is not on this machine (a message)."""
    where = os.path.join(os.environ["FASTGPT_GPT2_DIR"], name) if os.environ.get("FASTGPT_GPT2_DIR") else f"$FASTGPT_GPT2_DIR/{name}"
    return (f"the GPT-2 weights {name!r} are not on this machine and nothing is downloaded: put a Hugging Face {name} directory "
            f"(config.json + model.safetensors or pytorch_model.bin, and vocab.json for the tokenizer; e.g. a clone of "
            f"huggingface.co/openai-community/{name}) at {where} (set FASTGPT_GPT2_DIR to the folder that holds {name}/), "
            f"or in the Hugging Face cache ({_hub_cache()}); or pass that directory's path")


def bpe_dir(path):
    """``path`` when it is a directory holding GPT-2's BPE vocabulary (encoder.json or vocab.json), else None."""
    if path and os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in BPE_FILES):
        return path
    return None


def gpt2_bpe_dirs():
    """Directories of the GPT-2 search path that hold its BPE vocabulary."""
    return [d for name in GPT2_NAMES for d in candidates(name) if bpe_dir(d)]
