"""Shared benchmark machinery: device and peak figures, a timed runner, and a summary table.

`pytest benchmarks/ --benchmark-only` measures; `--benchmark-disable` (CI's smoke run) runs every
case once. FASTGPT_BENCH_SHORT=1 (the GPU check script) trims the shape lists. Without a GPU
the Triton providers run under the interpreter at tiny shapes: that keeps the code paths
exercised, and the summary labels those rows as not being performance numbers.

The GPU check sets two more: FASTGPT_CEILINGS, a JSON file of the copy bandwidth and matmul
rate it measured on the card (benchmarks/ceilings.py), which then replace the datasheet peaks
in every fraction of peak and MFU; and FASTGPT_BENCH_ROWS, a JSONL file each result is
appended to as soon as it is measured, so a run stopped by its time limit keeps what it did.
FASTGPT_BENCH_DRY=1 (its dry run) times one round.
"""
import json
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastgpt.hardware import gpu_peaks  # noqa: E402  (after TRITON_INTERPRET, like every fastgpt import here)

DEVICE = "cuda" if HAS_CUDA else "cpu"
SHORT = os.environ.get("FASTGPT_BENCH_SHORT") == "1"
DRY = os.environ.get("FASTGPT_BENCH_DRY") == "1"

_ROWS = []
_BASE = {}


def device_name():
    return torch.cuda.get_device_name() if HAS_CUDA else "cpu"


def measured_ceilings():
    """The ceilings benchmarks/ceilings.py measured on this device (FASTGPT_CEILINGS), or None."""
    path = os.environ.get("FASTGPT_CEILINGS")
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        ceilings = json.load(f)
    return ceilings if ceilings.get("device") == device_name() else None


def peaks():
    """(bytes/s, flop/s) this device is measured against: the measured ceilings when the GPU
    check took them, else the datasheet's; (None, None) when unknown or on the CPU."""
    measured = measured_ceilings()
    if measured is not None and HAS_CUDA:
        return measured["copy_bytes_per_s"], measured["matmul_flops"]
    return gpu_peaks(device_name()) if HAS_CUDA else (None, None)


def _append_row(benchmark, t, info):
    path = os.environ.get("FASTGPT_BENCH_ROWS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": benchmark.name, "median_s": t, "extra_info": info}) + "\n")


def sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def run(benchmark, fn, *, group, provider, baseline="torch", bytes_moved=None, flops=None, tokens=None, derived=None,
        **extra):
    """Time ``fn`` (synchronised on CUDA) and record throughput figures in extra_info.

    group: the case (op, pass, shape, dtype); provider: who ran it. The speedup is over the
    ``baseline`` provider's time (per token, when ``tokens`` is given) in the same group, when
    that ran first. ``derived(t)``, given
    the median seconds, returns more figures to record (e.g. MFU).
    """
    label = f"{group} [{provider}]"

    def timed():
        out = fn()
        sync()
        return out

    rounds = 1 if DRY else 5 if SHORT else 20
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=2 if HAS_CUDA else 0)
    bw, peak_flops = peaks()
    info = {"device": device_name(), "group": group, "provider": provider, **extra}
    if HAS_CUDA:
        info["peaks"] = "measured" if measured_ceilings() is not None else "datasheet"
    if benchmark.disabled:
        return info
    t = benchmark.stats.stats.median
    if bytes_moved is not None:
        info["GB/s"] = round(bytes_moved / t / 1e9, 1)
        if bw:
            info["frac_peak_bw"] = round(bytes_moved / t / bw, 3)
    if flops is not None:
        info["TFLOP/s"] = round(flops / t / 1e12, 1)
        if peak_flops:
            info["frac_peak_flops"] = round(flops / t / peak_flops, 3)
    if tokens is not None:
        info["tokens/s"] = round(tokens / t)
    if derived is not None:
        info.update(derived(t))
    if not HAS_CUDA and "triton" in provider:
        info["note"] = "Triton interpreter on CPU: not a performance number"
    # Over throughput when tokens are counted: providers of one group may run different batches.
    cost = t / tokens if tokens else t
    base = _BASE.get((group, baseline))
    if base is not None and provider != baseline:
        info["speedup"] = round(base / cost, 2)
    _BASE[(group, provider)] = cost
    benchmark.extra_info.update(info)
    _ROWS.append((label, t, info))
    _append_row(benchmark, t, info)
    return info


def print_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section(f"fastgpt benchmark summary ({device_name()}, torch {torch.__version__})")
    keys = ["GB/s", "frac_peak_bw", "TFLOP/s", "frac_peak_flops", "tokens/s", "speedup", "mfu", "peak_mem_MiB", "note"]
    tr.write_line(f"{'case':58s} {'median ms':>10s} " + " ".join(f"{k:>15s}" for k in keys))
    for label, t, info in _ROWS:
        cells = " ".join(f"{str(info.get(k, '')):>15s}" for k in keys)
        tr.write_line(f"{label:58s} {t * 1e3:10.3f} {cells}")

