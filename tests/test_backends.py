"""Backend choice: auto, forcing (context manager, environment, config), reports and errors."""
import os
import subprocess
import sys

import pytest
import torch

import fastgpt
from fastgpt import BackendError, backend_for, use_backend

X = torch.randn(2, 5, 8)
W = torch.ones(8)


def test_auto_on_cpu_is_reference():
    assert set(fastgpt.report("cpu").values()) == {"reference"}


def test_use_backend_forces_and_nests():
    assert backend_for("qkv_projection", X, torch.randn(24, 8), None, 2) == "reference"
    with use_backend("cuda"):
        assert backend_for("qkv_projection", X, torch.randn(24, 8), None, 2) == "cuda"
        with use_backend(qkv_projection="reference"):
            assert backend_for("qkv_projection", X, torch.randn(24, 8), None, 2) == "reference"
        with use_backend("auto"):
            assert backend_for("qkv_projection", X, torch.randn(24, 8), None, 2) == "reference"
    assert backend_for("qkv_projection", X, torch.randn(24, 8), None, 2) == "reference"


def test_forced_backend_that_cannot_run_raises():
    with use_backend(layer_norm="cuda"):
        with pytest.raises(BackendError, match=r"layer_norm: backend 'cuda' was forced.*has no 'cuda' backend \(it has: reference, triton\)"):
            fastgpt.ops.layer_norm(X, W, W)
    with use_backend(qkv_projection="triton"):
        with pytest.raises(BackendError, match="qkv_projection has no 'triton' backend"):
            fastgpt.ops.qkv_projection(X, torch.randn(24, 8), None, 2)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 2, 4, 16)
    with use_backend("triton"):
        with pytest.raises(BackendError, match="TRITON_INTERPRET=1"):
            fastgpt.ops.attention(q, q, q)


def test_a_wide_backend_applies_to_the_ops_that_have_it():
    """use_backend("cuda") / GPTConfig(backend=...): the ops with that backend use it, the others stay on auto."""
    with use_backend("cuda"):
        rep = fastgpt.report("cpu", n_embd=64, n_head=4)
        with use_backend("triton"):  # says nothing about qkv_projection, which has no triton backend
            inner = fastgpt.report("cpu", n_embd=64, n_head=4)
    assert rep == {"attention": "reference", "bias_gelu": "reference", "layer_norm": "reference", "linear_bias_gelu": "cuda",
                   "linear_cross_entropy": "reference", "mlp": "cuda", "qkv_projection": "cuda"}
    assert inner == {"attention": "triton", "bias_gelu": "triton", "layer_norm": "triton", "linear_bias_gelu": "triton",
                     "linear_cross_entropy": "triton", "mlp": "triton",
                     "qkv_projection": "cuda"}


def test_a_wide_backend_that_cannot_run_here_still_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with use_backend("triton"):
        rep = fastgpt.report("cpu", n_embd=64, n_head=4)
    assert rep["qkv_projection"] == "reference"
    for op in ("attention", "bias_gelu", "layer_norm", "linear_bias_gelu", "linear_cross_entropy", "mlp"):
        assert rep[op].startswith("error:") and "TRITON_INTERPRET=1" in rep[op], rep[op]


def test_model_config_backend_runs_the_ops_that_have_it():
    config = dict(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)
    ref = fastgpt.GPT(fastgpt.GPTConfig(**config, backend="reference"))
    model = fastgpt.GPT(fastgpt.GPTConfig(**config, backend="cuda"))
    model.load_state_dict(ref.state_dict())
    assert model.backends("cpu") == {"attention": "reference", "layer_norm": "reference", "mlp": "cuda", "qkv_projection": "cuda"}
    assert fastgpt.GPT(fastgpt.GPTConfig(**config, fused_loss=True)).backends("cpu")["linear_cross_entropy"] == "reference"
    idx = torch.randint(0, 11, (2, 8))
    torch.testing.assert_close(model(idx, idx)[1], ref(idx, idx)[1], rtol=1e-5, atol=1e-6)
    with use_backend(layer_norm="cuda"):  # one named op without that backend: an error
        with pytest.raises(BackendError, match="layer_norm: backend 'cuda' was forced"):
            model(idx)


@pytest.mark.parametrize("bad, match", [("tpu", "unknown backend 'tpu'"), ("softmax=triton", "unknown op 'softmax'")])
def test_unknown_names(bad, match):
    with pytest.raises(BackendError, match=match):
        with use_backend(bad):
            pass


def _report_in_subprocess(env_value):
    env = {**os.environ, "FASTGPT_BACKEND": env_value, "TRITON_INTERPRET": "1"}
    code = "import fastgpt; print(sorted(fastgpt.report('cpu', n_embd=64, n_head=4).items()))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_variable():
    out = _report_in_subprocess("qkv_projection=cuda")
    assert out.returncode == 0, out.stderr
    assert "('qkv_projection', 'cuda')" in out.stdout and "('layer_norm', 'reference')" in out.stdout
    wide = _report_in_subprocess("triton")
    assert wide.returncode == 0, wide.stderr
    assert "('layer_norm', 'triton')" in wide.stdout and "('qkv_projection', 'reference')" in wide.stdout
    bad = _report_in_subprocess("warp")
    assert bad.returncode != 0 and "FASTGPT_BACKEND: unknown backend 'warp'" in bad.stderr


def test_head_dim_outside_the_kernel_is_reported():
    q = torch.randn(1, 1, 4, 24)
    with use_backend("triton"):
        with pytest.raises(BackendError, match="head dims"):
            backend_for("attention", q, q, q)


def test_import_queries_no_gpu_and_compiles_nothing():
    code = (
        "import sys, torch\n"
        "torch.cuda.is_available = lambda: (_ for _ in ()).throw(AssertionError('GPU queried at import'))\n"
        "import fastgpt\n"
        "assert 'triton' not in sys.modules, 'triton imported at import time'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_forced_backends_are_per_thread():
    """Each thread sees its own use_backend (a context variable), eagerly."""
    import threading

    seen = {}
    inside, release = threading.Event(), threading.Event()

    def worker():
        with use_backend(qkv_projection="cuda"):
            seen["worker"] = backend_for("qkv_projection", X, torch.randn(24, 8), None, 2)
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(10)
    seen["main"] = backend_for("qkv_projection", X, torch.randn(24, 8), None, 2)
    release.set()
    t.join()
    assert seen == {"worker": "cuda", "main": "reference"}


def test_compiled_model_follows_the_forced_setting():
    """Under torch.compile the choice is traced and guarded: changing it recompiles, and
    leaving the block returns to the first graph."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append("fastgpt.qkv_projection" in str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    f = torch.compile(lambda x, w: fastgpt.ops.qkv_projection(x, w, None, 2)[0], fullgraph=True, backend=record)
    w = torch.randn(24, 8)
    f(X, w)
    with use_backend(qkv_projection="cuda"):
        f(X, w)
    f(X, w)
    assert graphs == [False, True]  # reference, then the extension op; the third call reuses the first


@pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton interpreter runs CPU tensors only without a GPU here")
def test_interpreter_refuses_bf16_dots_instead_of_returning_garbage():
    from fastgpt.kernels.attention import attention_fwd

    q = torch.randn(1, 2, 8, 16).bfloat16()
    with use_backend(attention="triton"):
        with pytest.raises(BackendError, match=r"attention: backend 'triton' was forced.*interpreter.*bfloat16 dots.*11584"):
            fastgpt.ops.attention(q, q, q)
        torch.testing.assert_close(fastgpt.ops.attention(q.half(), q.half(), q.half()).float(),
                                   fastgpt.ops.attention(q.float(), q.float(), q.float()), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="interpreter computes its dots wrongly"):
        attention_fwd(q, q, q, True, 0.25)
    # kernels without dots are right in bf16 under the interpreter: still allowed
    x, w = torch.randn(3, 64).bfloat16(), torch.randn(64).bfloat16()
    with use_backend("triton"):
        assert backend_for("layer_norm", x, w, w) == "triton" and backend_for("bias_gelu", x, w) == "triton"
        torch.testing.assert_close(fastgpt.ops.layer_norm(x, w, w).float(), torch.nn.functional.layer_norm(
            x.float(), (64,), w.float(), w.float()), atol=0.07, rtol=0)
