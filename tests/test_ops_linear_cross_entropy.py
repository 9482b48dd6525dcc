"""fastgpt.ops.linear_cross_entropy on both backends against the fp64 oracle (the unchunked
definition, fastgpt.reference.linear_cross_entropy: F.linear + F.cross_entropy) with the 2x rule:
the loss and both gradients, every reduction, ignored rows, awkward V and N, gradient
accumulation, the label check, the chunk size, peak memory and torch.compile."""
import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastgpt
from fastgpt import ops, reference
from helpers import DEVICE, FLOOR, HAS_CUDA, assert_2x_rule, copy, leaf

lce = importlib.import_module("fastgpt.ops.linear_cross_entropy")  # the module (fastgpt.ops.linear_cross_entropy is the op)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["reference", "triton"]


def _skip_interpreted_bf16(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not HAS_CUDA:
        pytest.skip("bf16 under the Triton interpreter is unreliable (CONVENTIONS): tested on a GPU")


def _inputs(B, T, C, V, ignore_every=7, device=DEVICE):
    """x (B, T, C) strided, weight (V, C) with logits of std ~2, targets with every
    ``ignore_every``-th one ignored (-1)."""
    x = torch.randn(B, T, 2 * C, device=device)[..., ::2]
    w = torch.randn(V, C, device=device) * (2.0 / C**0.5)
    t = torch.randint(0, V, (B, T), device=device)
    if ignore_every:
        t.view(-1)[::ignore_every] = -1
    return x, w, t


def _check(backend, dtype, x, w, t, reduction="mean", chunk_rows=16, ignore_index=-1):
    """The 2x rule on the loss, dx and dweight: the op on ``backend`` in ``dtype``; plain: the
    unchunked definition in ``dtype``; oracle: the definition in fp64 on the same rounded inputs."""
    x, w = copy(x, dtype), copy(w, dtype)
    dy = torch.randn(t.shape, device=t.device) if reduction == "none" else torch.tensor(0.7, device=t.device)
    runs = []
    for which, prec in (("op", dtype), ("plain", dtype), ("oracle", torch.float64)):
        xs, ws = leaf(x, prec), leaf(w, prec)
        if which == "op":
            with fastgpt.use_backend(linear_cross_entropy=backend):
                out = ops.linear_cross_entropy(xs, ws, t, ignore_index, reduction, chunk_rows=chunk_rows)
        else:
            out = reference.linear_cross_entropy(xs, ws, t, ignore_index, reduction)
        runs.append((out, *torch.autograd.grad(out, (xs, ws), dy.to(out.dtype))))
    (y, dx, dw), (py, pdx, pdw), (oy, odx, odw) = runs
    assert y.dtype == torch.float32, f"the loss is fp32 whatever the input dtype, got {y.dtype}"
    assert dx.dtype == x.dtype and dw.dtype == w.dtype and dx.shape == x.shape
    # the loss: fp32 in every dtype, so its floor is fp32's
    assert_2x_rule("loss", y, py, oy, dtype, floor=FLOOR[torch.float32] * max(1.0, oy.abs().max().item()))
    assert_2x_rule("dx", dx, pdx, odx, dtype)
    assert_2x_rule("dweight", dw, pdw, odw, dtype)
    return y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("V", [65, 1031])  # 1031: prime, past one 1024-column block
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, V, reduction):
    _skip_interpreted_bf16(backend, dtype)
    _check(backend, dtype, *_inputs(3, 9, 48, V), reduction=reduction, chunk_rows=8)  # N = 27: chunks of 8, 8, 8, 3


@pytest.mark.parametrize("V", [50257, 50304])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt2_vocab(backend, dtype, V):
    _skip_interpreted_bf16(backend, dtype)
    _check(backend, dtype, *_inputs(2, 5, 32, V, ignore_every=4), chunk_rows=4)  # N = 10: chunks of 4, 4, 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_chunk_or_one_row_per_chunk(backend):
    x, w, t = _inputs(1, 13, 16, 97)
    _check(backend, torch.float32, x, w, t, chunk_rows=1)
    _check(backend, torch.float32, x, w, t, chunk_rows=1000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_ignore_index_and_2d_input(backend):
    x, w, t = _inputs(1, 40, 24, 130, ignore_every=0)
    t[0, ::3] = -100
    _check(backend, torch.float32, x[0], w, t[0], ignore_index=-100, chunk_rows=9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored_gives_zero(backend):
    """The convention: 'mean' over no rows is 0 with zero gradients (F.cross_entropy: NaN)."""
    x, w, _ = _inputs(2, 5, 16, 65)
    t = torch.full((2, 5), -1, device=DEVICE)
    assert torch.isnan(F.cross_entropy(F.linear(x, w).view(10, 65), t.view(-1), ignore_index=-1))
    for reduction in ("mean", "sum", "none"):
        xs, ws = leaf(x), leaf(w)
        with fastgpt.use_backend(linear_cross_entropy=backend):
            loss = ops.linear_cross_entropy(xs, ws, t, reduction=reduction, chunk_rows=4)
        assert torch.equal(loss, torch.zeros_like(loss)), reduction
        loss.sum().backward()
        assert torch.equal(xs.grad, torch.zeros_like(x)) and torch.equal(ws.grad, torch.zeros_like(w)), reduction
    assert reference.linear_cross_entropy(x, w, t) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_accumulation(backend):
    """Several calls, one backward each, accumulate into .grad like the oracle's summed losses."""
    x, w, t = _inputs(3, 11, 32, 257)
    xs, ws = leaf(x), leaf(w)
    for k in range(3):
        with fastgpt.use_backend(linear_cross_entropy=backend):
            (ops.linear_cross_entropy(xs[k], ws, t[k], chunk_rows=4) / 3).backward()
    xo, wo = leaf(x, torch.float64), leaf(w, torch.float64)
    sum(reference.linear_cross_entropy(xo[k], wo, t[k]) for k in range(3)).div(3).backward()
    torch.testing.assert_close(xs.grad.double(), xo.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ws.grad.double(), wo.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_out_of_range_are_an_error(backend, monkeypatch):
    if DEVICE == "cuda":  # the default CUDA check is a device-side assert (next test); the flag makes it this error
        monkeypatch.setenv(lce.CHECK_TARGETS_ENV, "1")
    x, w, t = _inputs(1, 8, 16, 65)
    for bad in (65, -2, 1000):
        t2 = t.clone()
        t2[0, 3] = bad
        with fastgpt.use_backend(linear_cross_entropy=backend), pytest.raises(ValueError, match=rf"targets must be in \[0, 65\).*got {bad}"):
            ops.linear_cross_entropy(x, w, t2)


@pytest.mark.gpu
def test_targets_out_of_range_on_cuda_assert_on_the_device():
    """Without the flag, CUDA checks without a host sync: a device-side assert (in a child
    process: it leaves the CUDA context unusable)."""
    code = ("import torch, fastgpt; x = torch.randn(4, 8, device='cuda'); w = torch.randn(65, 8, device='cuda'); "
            "t = torch.tensor([1, 2, 70, 3], device='cuda'); loss = fastgpt.ops.linear_cross_entropy(x, w, t); "
            "torch.cuda.synchronize()")
    env = {k: v for k, v in os.environ.items() if k != lce.CHECK_TARGETS_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0 and "assert" in out.stderr.lower(), out.stderr[-2000:]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(targets=torch.zeros(2, 5, dtype=torch.int32)), TypeError, "int64"),
    (dict(targets=torch.zeros(2, 4, dtype=torch.long)), ValueError, r"targets must have shape \(2, 5\)"),
    (dict(weight=torch.zeros(65, 15)), ValueError, r"weight must be \(V, C\) = \(V, 16\)"),
    (dict(x=torch.zeros(2, 5, 16, 1)), ValueError, r"x must be \(N, C\) or \(B, T, C\)"),
    (dict(x=torch.zeros(2, 5, 16, dtype=torch.long)), TypeError, "x must be a floating-point tensor"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(chunk_rows=0), ValueError, "chunk_rows must be a positive int"),
    (dict(ignore_index=-1.0), TypeError, "ignore_index must be an int"),
], ids=["targets-dtype", "targets-shape", "weight-shape", "x-4d", "x-dtype", "reduction", "chunk_rows", "ignore_index"])
def test_bad_arguments(kwargs, error, match):
    args = dict(x=torch.zeros(2, 5, 16), weight=torch.zeros(65, 16), targets=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(error, match=match):
        ops.linear_cross_entropy(**{**args, **kwargs})


def test_fp64_runs_on_the_reference_only():
    x, w, t = (a.double() if a.is_floating_point() else a for a in _inputs(1, 6, 8, 65, device="cpu"))
    torch.testing.assert_close(ops.linear_cross_entropy(x, w, t), reference.linear_cross_entropy(x, w, t))
    with fastgpt.use_backend(linear_cross_entropy="triton"), pytest.raises(fastgpt.BackendError, match="float64"):
        ops.linear_cross_entropy(x, w, t)


def test_chunk_rows_choice(monkeypatch):
    pick, cpu = lce.pick_chunk_rows, torch.device("cpu")
    monkeypatch.delenv(lce.CHUNK_ROWS_ENV, raising=False)
    # 64 MiB holds 333 rows of fp32 GPT-2 logits -> at most 320 (a multiple of 64): 52 chunks of <= 320
    assert pick(16384, 50304, torch.float32, cpu, "triton") == 320
    assert pick(400, 50304, torch.float32, cpu, "triton") == 200  # two equal chunks, not 320 + 80
    assert pick(4100, 50304, torch.float32, cpu, "triton") == 320  # 13 chunks of 316, rounded up to 8 rows
    # the reference's fp32 working copy of bf16 logits counts: 222 rows -> 192
    assert pick(16384, 50304, torch.bfloat16, cpu, "reference") == 192
    assert pick(100, 50304, torch.float32, cpu, "triton") == 100  # never more than N
    assert pick(16384, 65, torch.float32, cpu, "reference") == 16384  # a small vocabulary: one chunk
    assert pick(16384, 2**22, torch.float32, cpu, "reference") == 2  # huge rows (and the fp32 log-softmax): fewer than 64
    monkeypatch.setenv(lce.CHUNK_ROWS_ENV, "100")
    assert pick(16384, 50304, torch.float32, cpu, "triton") == 100
    assert pick(30, 50304, torch.float32, cpu, "triton") == 30
    monkeypatch.setenv(lce.CHUNK_ROWS_ENV, "lots")
    with pytest.raises(ValueError, match=lce.CHUNK_ROWS_ENV):
        pick(16384, 50304, torch.float32, cpu, "triton")


def _spy(monkeypatch, backend):
    """Record (rows, grad) of every per-chunk cross-entropy call on ``backend``."""
    name = "_cross_entropy_chunk_triton" if backend == "triton" else "_cross_entropy_chunk_reference"
    real, calls = getattr(lce, name), []

    def spy(logits, targets, losses, ignore_index, row_scale, grad):
        calls.append((logits.shape[0], grad))
        return real(logits, targets, losses, ignore_index, row_scale, grad)

    monkeypatch.setattr(lce, name, spy)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_from_the_environment_and_no_gradients_without_grad(backend, monkeypatch):
    calls = _spy(monkeypatch, backend)
    monkeypatch.setenv(lce.CHUNK_ROWS_ENV, "6")
    x, w, t = _inputs(1, 20, 16, 65)
    xs, ws = leaf(x), leaf(w)
    with fastgpt.use_backend(linear_cross_entropy=backend):
        loss = ops.linear_cross_entropy(xs, ws, t)
        assert calls == [(6, True), (6, True), (6, True), (2, True)]
        calls.clear()
        with torch.no_grad():
            same = ops.linear_cross_entropy(xs, ws, t)
        assert calls == [(6, False), (6, False), (6, False), (2, False)]
    assert torch.equal(loss.detach(), same)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_second_backward_through_one_forward(reduction):
    """'mean' scales its gradients in place: a second backward through the same graph is refused
    by autograd's version check, never silently wrong; 'none' recomputes, so it works."""
    x, w, t = _inputs(1, 10, 16, 65)
    xs, ws = leaf(x), leaf(w)
    loss = ops.linear_cross_entropy(xs, ws, t, reduction=reduction).sum()
    first = torch.autograd.grad(loss, (xs, ws), retain_graph=True)
    if reduction == "none":
        for a, b in zip(torch.autograd.grad(loss, (xs, ws)), first):
            torch.testing.assert_close(a, b)
    else:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(loss, (xs, ws))


def test_triton_backend_launches_the_kernel(monkeypatch):
    """No silent reference path: the triton backend calls the kernel's launcher per chunk."""
    from fastgpt.kernels import cross_entropy

    calls, real = [], cross_entropy.cross_entropy_fwd_bwd
    monkeypatch.setattr(cross_entropy, "cross_entropy_fwd_bwd", lambda *a, **k: (calls.append(a[0].shape), real(*a, **k))[1])
    x, w, t = _inputs(1, 10, 16, 65)
    with fastgpt.use_backend(linear_cross_entropy="triton"):
        ops.linear_cross_entropy(leaf(x), leaf(w), t, chunk_rows=4).backward()
    assert calls == [(4, 65), (4, 65), (2, 65)]


def test_reduction_none_backward_runs_the_chunks_again(monkeypatch):
    """Per-row upstream gradients: the forward computes no gradient, the backward does."""
    calls = _spy(monkeypatch, "reference")
    x, w, t = _inputs(1, 10, 16, 65)
    with fastgpt.use_backend(linear_cross_entropy="reference"):
        losses = ops.linear_cross_entropy(leaf(x), leaf(w), t, reduction="none", chunk_rows=5)
        assert calls == [(5, False), (5, False)]
        losses.sum().backward()
    assert calls[2:] == [(5, True), (5, True)]


def _allocations(fn):
    """(largest single allocation, peak of the bytes allocated above the start) while ``fn`` runs,
    from the CPU allocator's events in torch's profiler."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation:
            events.append((node.start_time_ns, node.typed[1].alloc_size, node.typed[1].total_allocated))
    assert events, "the profiler recorded no allocations"
    events.sort()
    base = events[0][2] - events[0][1]  # allocated before the first event
    return max(size for _, size, _ in events), max(total for *_, total in events) - base


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reference_never_allocates_the_logits(dtype):
    """Forward and backward on the reference (CPU) path: no allocation near the (N, V) logits;
    the peak extra memory is a chunk (plus its fp32 copy for bf16) and (V, C)-sized gradients.
    N >> C, and one thread: the CPU GEMM's own scratch scales with V * C (padded) and, on some
    builds, with the thread count; neither is what this test is about."""
    N, C, V, rows = 2048, 32, 8192, 32
    x, w, t = _inputs(1, N, C, V, device="cpu")
    x, w = leaf(x[0], dtype), leaf(w, dtype)
    t = t[0]
    logits_bytes = N * V * torch.finfo(dtype).bits // 8

    def fused():
        ops.linear_cross_entropy(x, w, t, chunk_rows=rows).backward()

    def materialised():
        reference.linear_cross_entropy(x, w, t).backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with fastgpt.use_backend(linear_cross_entropy="reference"):
            largest, peak = _allocations(fused)
        largest_m, peak_m = _allocations(materialised)
    finally:
        torch.set_num_threads(threads)
    mib = 2**20
    assert largest < logits_bytes / 4, f"largest allocation {largest / mib:.1f} MiB, (N, V) logits {logits_bytes / mib:.1f} MiB"
    assert peak < logits_bytes / 2, f"peak {peak / mib:.1f} MiB, (N, V) logits {logits_bytes / mib:.1f} MiB"
    # the measurement sees an (N, V) tensor where there is one
    assert largest_m >= logits_bytes and peak_m > 4 * peak, (largest_m / mib, peak_m / mib, peak / mib)


def test_autocast_bf16_on_cpu():
    """Under autocast the op runs in the autocast dtype, like F.linear; the weight's gradient is fp32."""
    x, w, t = _inputs(2, 9, 32, 300, device="cpu")
    xs, ws = leaf(x), leaf(w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ops.linear_cross_entropy(xs, ws, t, chunk_rows=5)
        plain = reference.linear_cross_entropy(x, w, t)
    loss.backward()
    assert loss.dtype == torch.float32 and ws.grad.dtype == torch.float32
    oracle = reference.linear_cross_entropy(x.bfloat16().double(), w.bfloat16().double(), t)
    assert abs(loss.item() - oracle.item()) <= 2 * abs(plain.item() - oracle.item()) + 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    x, w, t = _inputs(2, 9, 16, 65)

    def step(x, w, t):
        return ops.linear_cross_entropy(x, w, t, chunk_rows=5), ops.linear_cross_entropy(x, w, t, reduction="none").sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, step):
        xs, ws = leaf(x), leaf(w)
        with fastgpt.use_backend(linear_cross_entropy=backend):
            a, b = fn(xs, ws, t)
            (a + b).backward()
        results.append((a, b, xs.grad, ws.grad))
    for c, e in zip(*results):
        torch.testing.assert_close(c, e)


@pytest.mark.gpu
def test_report_picks_triton_on_cuda():
    assert fastgpt.report("cuda", torch.bfloat16)["linear_cross_entropy"] == "triton"


@pytest.mark.gpu
def test_cuda_peak_memory_is_below_half_the_logits():
    """GPT-2's loss stage at N = 16384 in bf16: the fused forward and backward allocate less than
    half of one (N, V) bf16 tensor above the inputs; nanoGPT's path allocates several."""
    N, C, V = 16384, 768, 50304
    x = torch.randn(N, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(V, C, device="cuda") * 0.02).bfloat16().requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda")

    def peak(fn):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        torch.autograd.grad(fn(), (x, w))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    logits_bytes = N * V * 2
    fused = peak(lambda: ops.linear_cross_entropy(x, w, t))
    plain = peak(lambda: F.cross_entropy(F.linear(x, w), t, ignore_index=-1))
    assert fused < logits_bytes / 2, f"fused loss stage peak {fused / 2**20:.0f} MiB, logits {logits_bytes / 2**20:.0f} MiB"
    assert plain > 2 * logits_bytes
