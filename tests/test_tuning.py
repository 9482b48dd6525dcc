"""The tuning-table loader (fastgpt.kernels.tuning) and the launchers' use of it: a hit picks
the tabled candidate, a miss or an untrusted table picks the first, with one warning; never a
crash. The launchers consult it only for CUDA tensors, so the device is faked here."""
import fnmatch
import json
import os
import tomllib
import types
import warnings

import pytest
import torch

from fastgpt.kernels import attention, bias_gelu, layer_norm, tuning
from fastgpt.kernels.limits import SHARED_MEMORY_PER_BLOCK

H200 = ("NVIDIA H200", (9, 0))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """A private tables folder; returns write(table, device=H200) -> path."""
    monkeypatch.setenv("FASTGPT_TUNED_DIR", str(tmp_path))
    monkeypatch.delenv("FASTGPT_TUNED", raising=False)
    tuning.clear_cache()

    def write(table, device=H200, text=None):
        path = tmp_path / tuning.table_name(*device)
        path.write_text(json.dumps(table) if text is None else text)
        tuning.clear_cache()
        return path

    yield write
    tuning.clear_cache()


def table_for(kernel, key, config, device=H200, source=None):
    family = kernel.split(".")[0]
    return {"schema": tuning.SCHEMA,
            "device": {"name": device[0], "capability": list(device[1])},
            "provenance": {"note": "written by a test"},
            "kernels": {kernel: {"source": source or tuning.source_hash(family),
                                 "entries": {tuning.key_string(key): {"config": config, "ms": 0.1}}}}}


LN_KEY = layer_norm.tuning_key(16384, 768, torch.bfloat16)
LN_CANDIDATES = layer_norm.config_candidates("fwd", 768)
LN_TUNED = LN_CANDIDATES[3]


def pick_ln(key=LN_KEY, device=H200):
    return tuning.pick("layer_norm.fwd", device, key, LN_CANDIDATES)


def test_names_keys_and_buckets():
    assert tuning.table_name("NVIDIA H200", (9, 0)) == "sm90-nvidia-h200.json"
    assert tuning.table_name("NVIDIA A100-SXM4-80GB", (8, 0)) == "sm80-nvidia-a100-sxm4-80gb.json"
    assert [tuning.bucket(n) for n in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]
    assert tuning.key_string({"dtype": torch.bfloat16, "N": 768, "causal": True}) == "N=768,causal=1,dtype=bfloat16"


def test_hit_picks_the_tabled_candidate(tables):
    tables(table_for("layer_norm.fwd", LN_KEY, LN_TUNED))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pick_ln() is LN_TUNED
        # every M in the same power-of-two bucket shares the entry
        assert pick_ln(layer_norm.tuning_key(9000, 768, torch.bfloat16)) is LN_TUNED


@pytest.mark.parametrize("case", ["other key", "other kernel", "other device", "no table", "switched off"])
def test_miss_falls_back_to_the_first_candidate(tables, monkeypatch, case):
    tables(table_for("layer_norm.fwd", LN_KEY, LN_TUNED))
    key, device = LN_KEY, H200
    if case == "other key":
        key = layer_norm.tuning_key(16384, 768, torch.float16)
    elif case == "other device":
        device = ("NVIDIA A100-SXM4-80GB", (8, 0))
    elif case == "no table":
        monkeypatch.setenv("FASTGPT_TUNED_DIR", os.path.join(os.environ["FASTGPT_TUNED_DIR"], "empty"))
    elif case == "switched off":
        monkeypatch.setenv("FASTGPT_TUNED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a miss is silent
        if case == "other kernel":
            assert tuning.pick("layer_norm.bwd", device, key, ["first", "second"]) == "first"
        else:
            assert pick_ln(key, device) is LN_CANDIDATES[0]


def test_stale_source_warns_once_and_falls_back(tables):
    tables(table_for("layer_norm.fwd", LN_KEY, LN_TUNED, source="0" * 64))
    with pytest.warns(tuning.TunedTableWarning, match="source hash differs"):
        assert pick_ln() is LN_CANDIDATES[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per file and reason
        assert pick_ln() is LN_CANDIDATES[0]


def test_config_not_among_candidates_warns_and_falls_back(tables):
    tables(table_for("layer_norm.fwd", LN_KEY, {"BLOCK_M": 64, "num_warps": 1}))
    with pytest.warns(tuning.TunedTableWarning, match="not among today's candidates"):
        assert pick_ln() is LN_CANDIDATES[0]


def _good():
    return table_for("layer_norm.fwd", LN_KEY, LN_TUNED)


MALFORMED = {
    "not json": (None, "{ not json"),
    "a list": ([1, 2], None),
    "old schema": ({**_good(), "schema": 0}, None),
    "no device": ({k: v for k, v in _good().items() if k != "device"}, None),
    "bad capability": ({**_good(), "device": {"name": "NVIDIA H200", "capability": "9.0"}}, None),
    "kernels a list": ({**_good(), "kernels": []}, None),
    "no source": ({**_good(), "kernels": {"layer_norm.fwd": {"entries": {}}}}, None),
    "float config": (table_for("layer_norm.fwd", LN_KEY, {"BLOCK_M": 2.0, "num_warps": 4}), None),
    "empty config": (table_for("layer_norm.fwd", LN_KEY, {}), None),
    "other device inside": (table_for("layer_norm.fwd", LN_KEY, LN_TUNED, device=("NVIDIA H100", (9, 0))), None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_table_warns_once_and_falls_back(tables, case):
    table, text = MALFORMED[case]
    path = tables(table, text=text)
    with pytest.warns(tuning.TunedTableWarning, match="ignoring tuning table") as record:
        assert pick_ln() is LN_CANDIDATES[0]
        assert pick_ln() is LN_CANDIDATES[0]
    assert len(record) == 1 and str(path) in str(record[0].message)


# ---- backend choices: which backend auto runs the GEMM ops on (scripts/tune.py --backends)

MLP_KEY = {"dtype": torch.bfloat16, "K": 768, "N": 3072, "rows": 16384}
SOURCES = "a" * 64  # stands in for fastgpt._C.sources_sha256()


def with_backends(op="mlp", key=MLP_KEY, backend="cuda", source=SOURCES, table=None):
    table = dict(table or _good())
    table["backends"] = {op: {"source": source, "entries": {tuning.key_string(key): {"backend": backend, "ms": {}}}}}
    return table


def test_backend_choice_hit_miss_and_other_build(tables):
    tables(with_backends())
    assert tuning.backend_choice("mlp", H200, MLP_KEY, SOURCES) == "cuda"
    assert tuning.backend_choice("mlp", H200, {**MLP_KEY, "rows": 8192}, SOURCES) is None  # no entry
    assert tuning.backend_choice("qkv_projection", H200, MLP_KEY, SOURCES) is None  # no choices for that op
    assert tuning.backend_choice("mlp", ("NVIDIA H100", (9, 0)), MLP_KEY, SOURCES) is None  # no table
    assert pick_ln() is LN_TUNED  # the configs of the same table still apply
    with pytest.warns(tuning.TunedTableWarning, match="another build of fastgpt._C"):
        assert tuning.backend_choice("mlp", H200, MLP_KEY, "b" * 64) is None


@pytest.mark.parametrize("bad", [{"backends": []}, with_backends(backend="cutlass"),
                                 {"backends": {"mlp": {"entries": {}}}}])
def test_malformed_backend_choices(tables, bad):
    tables({**_good(), **bad})
    with pytest.warns(tuning.TunedTableWarning, match="ignoring tuning table"):
        assert tuning.backend_choice("mlp", H200, MLP_KEY, SOURCES) is None


@pytest.mark.parametrize("op", ["mlp", "linear_bias_gelu", "qkv_projection"])
def test_auto_order_follows_the_backend_choice(monkeypatch, op):
    """Each GEMM op's auto order asks the table for its key, and puts a named backend first."""
    import importlib

    from fastgpt.ops import _extension

    module = importlib.import_module(f"fastgpt.ops.{op}")
    asked = []
    for answer, expected in ((None, {"mlp": ("triton",), "linear_bias_gelu": ("triton",), "qkv_projection": ()}[op]),
                             ("cuda", {"mlp": ("cuda", "triton"), "linear_bias_gelu": ("cuda", "triton"),
                                       "qkv_projection": ("cuda",)}[op])):
        monkeypatch.setattr(_extension, "tuned_backend", lambda o, x, key, a=answer: asked.append((o, key)) or a)
        x = types.SimpleNamespace(is_cuda=True, shape=(4, 1024, 768), numel=lambda: 4 * 1024 * 768,
                                  device=torch.device("cpu"), dtype=torch.bfloat16)
        w = torch.empty(3072 if op != "qkv_projection" else 2304, 768)
        args = (x, w, None, 12) if op == "qkv_projection" else (x, w, None, torch.empty(768, 3072), None) \
            if op == "mlp" else (x, w, None)
        assert module._auto_order(*args) == expected
    want = {"dtype": torch.bfloat16, "C": 768, "H": 12, "tokens": 4096} if op == "qkv_projection" else \
        {"dtype": torch.bfloat16, "K": 768, "N": 3072, "rows": 4096}
    assert asked == [(op, want)] * 2
    assert module._auto_order(torch.empty(4, 768), w, None, *args[3:]) == ()  # CPU tensors: reference


def test_same_table_same_choice_across_reloads(tables):
    tables(table_for("layer_norm.fwd", LN_KEY, LN_TUNED))
    first = pick_ln()
    tuning.clear_cache()  # as a new process would: read the file again
    assert pick_ln() is first is LN_TUNED


def test_a_table_is_read_once_until_the_cache_is_cleared(tables):
    path = tables(table_for("layer_norm.fwd", LN_KEY, LN_TUNED))
    assert pick_ln() is LN_TUNED
    path.write_text(json.dumps(table_for("layer_norm.fwd", LN_KEY, LN_CANDIDATES[2])))
    assert pick_ln() is LN_TUNED
    tuning.clear_cache()
    assert pick_ln() is LN_CANDIDATES[2]


# --- the launchers' wiring: each asks for its own kernel name and key -----------------------

def _fake_cuda(monkeypatch, shape, dtype):
    monkeypatch.setattr(tuning, "device_identity", lambda index: H200)
    return types.SimpleNamespace(shape=shape, dtype=dtype, is_cuda=True, device=torch.device("cuda", 0))


@pytest.mark.parametrize("kind", layer_norm.TUNABLE)
def test_layer_norm_launcher_reads_the_table(tables, monkeypatch, kind):
    x = _fake_cuda(monkeypatch, (32768, 1600), torch.bfloat16)
    candidates = layer_norm.config_candidates(kind, 1600)
    assert layer_norm._pick(kind, x) is candidates[0]
    tables(table_for(f"layer_norm.{kind}", layer_norm.tuning_key(32768, 1600, torch.bfloat16), candidates[-1]))
    assert layer_norm._pick(kind, x) is candidates[-1]


@pytest.mark.parametrize("kind", bias_gelu.TUNABLE)
def test_bias_gelu_launcher_reads_the_table(tables, monkeypatch, kind):
    x = _fake_cuda(monkeypatch, (16384, 3072), torch.bfloat16)
    candidates = bias_gelu.config_candidates(kind, 3072)
    key = bias_gelu.tuning_key(16384, 3072, torch.bfloat16, "none")
    tables(table_for(f"bias_gelu.{kind}", key, candidates[-1]))
    assert bias_gelu._pick(kind, x, "none") is candidates[-1]
    assert bias_gelu._pick(kind, x, "tanh") is candidates[0]  # another key


@pytest.mark.parametrize("kind", attention.TUNABLE)
def test_attention_launcher_reads_the_table(tables, monkeypatch, kind):
    monkeypatch.setattr(tuning, "device_identity", lambda index: H200)
    monkeypatch.setattr(attention, "device_target", lambda device: (90, SHARED_MEMORY_PER_BLOCK[90]))
    cuda = torch.device("cuda", 0)
    candidates = attention.config_candidates(kind, 90, 64, torch.bfloat16, False, 1024, 1024, SHARED_MEMORY_PER_BLOCK[90])
    assert len(candidates) > 1
    tma = attention.use_tma(90, torch.bfloat16)
    key = attention.tuning_key(64, torch.bfloat16, False, True, tma, 1024, 1024)
    tables(table_for(f"attention.{kind}", key, attention.config_fields(candidates[-1])))
    fields = attention.config_fields

    def plan(T, causal):
        cfg, planned_tma = attention._plan(kind, cuda, 64, torch.bfloat16, False, causal, T, T)
        assert planned_tma == tma
        return fields(cfg)

    assert plan(1000, True) == fields(candidates[-1])  # 1000 shares 1024's entry
    assert plan(1024, False) == fields(candidates[0])  # not causal: another key
    assert plan(2048, True) == fields(candidates[0])
    # the key records the load path: a table measured without TMA does not steer a TMA launch
    tables(table_for(f"attention.{kind}", {**key, "tma": not tma}, attention.config_fields(candidates[-1])))
    assert plan(1024, True) == fields(candidates[0])


def test_tables_ship_as_package_data():
    """pyproject's package data covers kernels/tuned/*.json, where harvest.py puts the tables."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert setuptools["package-dir"]["fastgpt.kernels"] == "kernels"
    patterns = setuptools["package-data"]["fastgpt.kernels"]
    assert any(fnmatch.fnmatch("tuned/sm90-nvidia-h200.json", p) for p in patterns)
    assert tuning.PACKAGE_DIR == os.path.join(ROOT, "kernels", "tuned")


def test_every_layer_norm_backward_candidate_is_exact_and_deterministic():
    """A table may name any candidate: each must give the default's gradients (up to the
    order of fp32 sums) and repeat them bit for bit."""
    N = 96
    x, dy = torch.randn(131, N), torch.randn(131, N)
    w, b = 1 + 0.1 * torch.randn(N), 0.1 * torch.randn(N)
    _, mean, rstd = layer_norm.layer_norm_fwd(x, w, b, 1e-5)
    want = layer_norm.layer_norm_bwd(dy, x, w, b, mean, rstd)
    candidates = layer_norm.config_candidates("bwd", N)
    assert len({c["BLOCK_M"] for c in candidates}) > 1
    for cfg in candidates:
        got = layer_norm.layer_norm_bwd(dy, x, w, b, mean, rstd, config=cfg)
        again = layer_norm.layer_norm_bwd(dy, x, w, b, mean, rstd, config=cfg)
        for name, g, a, ref in zip(("dx", "dweight", "dbias"), got, again, want):
            assert torch.equal(g, a), f"{name} differs between two runs of {cfg}"
            assert (g - ref).abs().max() <= 1e-5 * (1 + ref.abs().max()), f"{name} with {cfg}"
