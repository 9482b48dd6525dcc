"""Test set-up shared by the whole suite (the shared code itself is in helpers.py).

Without a GPU, Triton kernels run on CPU tensors through the interpreter, which must be
switched on before triton is first imported; ``import torch`` does not import triton.
Every test starts from the same RNG state, derived from its own id.
"""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import DEVICE, HAS_CUDA, make_text, seed_everything, tiny  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on the CPU machine")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    """Seed torch and random from the test's id: each test and parameter case gets its own
    inputs, the same on every run and whatever ran before it."""
    seed_everything(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(make_text())
    return str(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture(scope="session")
def trained(text_file, data_dir, tmp_path_factory):
    """A finished 10-iteration run (its out_dir)."""
    from fastgpt.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(tiny(text_file, data_dir, out, iters=10))
    return out
