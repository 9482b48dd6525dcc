#!/usr/bin/env python3
"""Sweep the Triton kernels' candidate configs on this GPU and write its tuning table.

    python scripts/tune.py --out DIR [--budget SECONDS] [--workers N]
    python scripts/tune.py --dry-run --out DIR     # CPU: interpreter, tiny shapes, host timers
    python scripts/tune.py --backends --out DIR    # the GEMM ops' backends (needs fastgpt._C's CUDA part)

Kernels and ladders (each kernel module's tuning interface: TUNABLE, config_candidates,
tuning_key, launch_with_config):
  attention fwd, bwd        causal; head dim 64 and 128 (12 and 6 heads); bf16 and fp16; with
                            and without dropout; T = 1024, 2048, 512, 4096, 256, 8192 at 16K tokens;
                            the launchers' load path (TMA on sm_90); bwd includes its preprocess
  layer_norm fwd, bwd       N = 768, 1024, 1600, 3072, 4096; M = 16K, 32K, 64K, 8K rows; bf16
  bias_gelu fwd, bwd        the same N and M, exact-erf GELU; bf16
GPT-2 small's shapes come first, so a sweep cut short by --budget still tunes what trains.

Each candidate is timed with CUDA events: the median of --reps runs, each after a write of a
buffer twice the L2 size (the L2 starts cold) and a short GPU spin (the launch is queued before
the GPU reaches it, so host overhead stays out of small kernels' times); the inputs rotate
among as many copies as make twice the L2. The fastest candidate whose outputs are all written
(poisoned first), that pass the 2x rule against the fp32 reference (tests/helpers.py), and
(attention) whose compiled kernel spills no registers (Triton's n_spills, as the AOT tests
demand) becomes the table entry; a failing one is reported and the next fastest tried. The table is rewritten after
every point, so a sweep stopped at any moment leaves a valid table of what it finished.

Before timing, --workers processes launch every (point, kernel, config) once, sharded by
compiled kernel, so Triton's compile cache is warm when the timing starts: compiling ~200
kernels one after another would take minutes.

--backends times, instead, the ops whose ``cuda`` backend is a CUTLASS GEMM (qkv_projection,
linear_bias_gelu, mlp) fwd+bwd on ``cuda`` against what ``auto`` runs without a measurement
(cuBLAS + view; F.linear + the Triton bias+GELU kernel), at GPT-2 small and XL widths, 16K tokens,
bf16; ``cuda`` becomes the table's choice for a shape where it is at least 3% faster and its output
and every gradient pass the 2x rule. The choices go into the table's "backends" section (merged
into the file already at DIR), tagged with fastgpt._C.sources_sha256(): a build from other
sources ignores them. The GPU check runs it once the CUDA build is in.

The table, DIR/<sm>-<device>.json (see fastgpt.kernels.tuning), goes into kernels/tuned/ via
scripts/harvest.py. --dry-run runs the same code on the CPU under the Triton interpreter with
tiny shapes and sm_90's candidate lists: it tests this script, and its table (device
"cpu (dry run)") is no measurement.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRY_DEVICE = ("cpu (dry run)", (0, 0))
DRY_CANDIDATES = 2  # the dry run tests the script: two candidates per kernel make a choice


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the table")
    p.add_argument("--budget", type=float, default=240.0, help="seconds for the whole sweep, warm-up included")
    p.add_argument("--workers", type=int, default=None, help="compile warm-up processes (default: cores - 2; 0: none)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per candidate (default 15; dry run 2)")
    p.add_argument("--only", default="", help="comma-separated families (attention, layer_norm, bias_gelu)")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    p.add_argument("--backends", action="store_true", help="time the GEMM ops' backends instead (see above)")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # i/n: a warm-up worker
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.dry_run else 15
    return args


ARGS = parse_args()
if ARGS.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The sweep passes every config itself; the references and helpers must not read a table.
os.environ["FASTGPT_TUNED"] = "0"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
from fastgpt import reference  # noqa: E402
from fastgpt.kernels import attention as A  # noqa: E402
from fastgpt.kernels import bias_gelu as G  # noqa: E402
from fastgpt.kernels import layer_norm as L  # noqa: E402
from fastgpt.kernels import tuning  # noqa: E402
from fastgpt.kernels.limits import SHARED_MEMORY_PER_BLOCK  # noqa: E402
from helpers import assert_2x_rule, check_2x_rule  # noqa: E402  (the one home of the 2x rule)

DEVICE = torch.device("cpu") if ARGS.dry_run else torch.device("cuda", 0)
NAN = float("nan")


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# targets: what to sweep, how to launch and check it


class AttentionTarget:
    family, module = "attention", A
    dropout_p, seed, tokens = 0.1, 1234, 16384

    def __init__(self, dry):
        self.dry = dry
        self.arch, self.limit = (90, SHARED_MEMORY_PER_BLOCK[90]) if dry else A.device_target(DEVICE)

    def tma(self, pt):
        # The launchers' load path; the dry run's interpreter takes the pointer path.
        return not self.dry and A.use_tma(self.arch, pt["dtype"])

    def points(self):
        if self.dry:
            return [dict(dtype=torch.float16, D=64, dropout=False, T=64, tier=0), dict(dtype=torch.float16, D=64, dropout=True, T=32, tier=1)]
        out = []
        ladder = (1024, 2048, 512, 4096, 256, 8192)
        variants = [(torch.bfloat16, 64, False), (torch.bfloat16, 64, True), (torch.bfloat16, 128, False),
                    (torch.float16, 64, False), (torch.float16, 128, False), (torch.bfloat16, 128, True),
                    (torch.float16, 64, True), (torch.float16, 128, True)]
        for v, (dtype, D, dropout) in enumerate(variants):
            for i, T in enumerate(ladder):
                # GPT-2 small's training shape first, then its other lengths, then the rest
                tier = 0 if (v, i) == (0, 0) else 1 if v == 0 else 2 + v
                out.append(dict(dtype=dtype, D=D, dropout=dropout, T=T, tier=tier))
        return out

    def key(self, pt):
        return A.tuning_key(pt["D"], pt["dtype"], pt["dropout"], True, self.tma(pt), pt["T"], pt["T"])

    def candidates(self, pt, kind):
        found = A.config_candidates(kind, self.arch, pt["D"], pt["dtype"], pt["dropout"], pt["T"], pt["T"], self.limit)
        return found[:DRY_CANDIDATES] if self.dry else found

    def describe(self, pt):
        return f"D={pt['D']} T={pt['T']} {_dtype_name(pt['dtype'])}{' dropout' if pt['dropout'] else ''}"

    def compile_group(self, pt, kind, cfg):
        return (kind, str(pt["dtype"]), pt["D"], pt["dropout"], self.tma(pt), json.dumps(A.config_fields(cfg), sort_keys=True))

    def setup(self, pt, n_sets, warm=False):
        T, D, dtype = pt["T"], pt["D"], pt["dtype"]
        B, H = (1, 2) if self.dry else (max(1, self.tokens // T), 768 // D)
        p = self.dropout_p if pt["dropout"] else 0.0
        st = dict(B=B, H=H, T=T, D=D, dtype=dtype, p=p, scale=D ** -0.5, tma=self.tma(pt), sets=[])
        for _ in range(n_sets):
            q, k, v, do = (torch.randn(B, H, T, D, device=DEVICE, dtype=dtype) for _ in range(4))
            if warm:  # a warm-up launch only compiles: any o and lse of the right shapes will do
                o, lse = torch.randn_like(q), torch.zeros(B, H, T, device=DEVICE)
            else:
                o, lse = A.attention_fwd(q, k, v, True, st["scale"], p, self.seed)
            st["sets"].append(dict(q=q, k=k, v=v, do=do, o=o, lse=lse))
        shape = (B, H, T, D)
        st["out"] = dict(o=torch.empty(shape, device=DEVICE, dtype=dtype), lse=torch.empty((B, H, T), device=DEVICE),
                         delta=torch.empty((B, H, T), device=DEVICE),
                         dq=torch.empty(shape, device=DEVICE, dtype=dtype), dk=torch.empty(shape, device=DEVICE, dtype=dtype),
                         dv=torch.empty(shape, device=DEVICE, dtype=dtype))
        return st

    def bytes_per_set(self, pt):
        B, H = (1, 2) if self.dry else (max(1, self.tokens // pt["T"]), 768 // pt["D"])
        return 5 * B * H * pt["T"] * pt["D"] * torch.finfo(pt["dtype"]).bits // 8

    def run(self, kind, cfg, st, i):
        s, out = st["sets"][i], st["out"]
        args = dict(q=s["q"], k=s["k"], v=s["v"], causal=True, scale=st["scale"], dropout_p=st["p"], seed=self.seed,
                    tma=st["tma"])
        if kind == "fwd":
            return A.launch_with_config(kind, cfg, **args, o=out["o"], lse=out["lse"])
        return A.launch_with_config(kind, cfg, **args, o=s["o"], lse=s["lse"], do=s["do"], delta=out["delta"],
                                    dq=out["dq"], dk=out["dk"], dv=out["dv"])

    def _oracle(self, st):
        """fp32 oracle and low-precision plain results on batch 0, heads 0-1 (every (b, h) runs
        the same code; all of each output is checked for being written)."""
        if "oracle" in st:
            return st["oracle"]
        s, hs = st["sets"][0], min(2, st["H"])
        mask = A.dropout_mask(1, hs, st["T"], st["T"], st["p"], self.seed, DEVICE) if st["p"] > 0 else None
        res = {}
        for name, dtype in (("oracle", torch.float32), ("plain", st["dtype"])):
            q, k, v = (s[n][:1, :hs].to(dtype).requires_grad_() for n in ("q", "k", "v"))
            o = reference.attention_math(q, k, v, True, st["scale"], mask, st["p"])
            dq, dk, dv = torch.autograd.grad(o, (q, k, v), s["do"][:1, :hs].to(dtype))
            scores = (q @ k.transpose(-2, -1)).float() * st["scale"]
            scores = scores.masked_fill(~reference.causal_mask(st["T"], st["T"], DEVICE), float("-inf"))
            res[name] = dict(o=o, lse=torch.logsumexp(scores, -1), dq=dq, dk=dk, dv=dv)
        st["oracle"] = res
        return res

    def check(self, kind, cfg, st):
        out = st["out"]
        names = {"fwd": ("o", "lse"), "bwd": ("dq", "dk", "dv")}[kind]
        for n in names:
            out[n].fill_(NAN)
        compiled = self.run(kind, cfg, st, 0)
        # Triton fills n_spills when it loads a kernel on the GPU; the AOT tests reject spills.
        spills = getattr(compiled, "n_spills", 0) or 0
        if spills:
            raise AssertionError(f"spills {spills} bytes of registers under triton {triton.__version__}")
        ref, hs = self._oracle(st), min(2, st["H"])
        for n in names:
            if not torch.isfinite(out[n]).all():
                raise AssertionError(f"{n}: unwritten (NaN poison left) or non-finite elements")
            dtype = torch.float32 if n == "lse" else st["dtype"]
            assert_2x_rule(n, out[n][:1, :hs], ref["plain"][n], ref["oracle"][n], dtype=dtype)


class RowTarget:
    """LayerNorm and bias+GELU: (M, N) rows, forward and backward."""
    tokens_ladder = (16384, 32768, 65536, 8192)
    widths = (768, 1024, 1600, 3072, 4096)

    def __init__(self, dry):
        self.dry = dry

    def points(self):
        if self.dry:
            return [dict(dtype=torch.float32, N=N, M=64, tier=0) for N in self.dry_widths]
        return [dict(dtype=torch.bfloat16, N=N, M=M, tier=0 if N == self.gpt2_width else 2)
                for N in self.widths for M in self.tokens_ladder]

    def candidates(self, pt, kind):
        found = self.module.config_candidates(kind, pt["N"])
        return found[:DRY_CANDIDATES] if self.dry else found

    def describe(self, pt):
        return f"M={pt['M']} N={pt['N']} {_dtype_name(pt['dtype'])}"

    def compile_group(self, pt, kind, cfg):
        fields = {k: v for k, v in cfg.items() if k != "programs_per_sm"}
        return (kind, str(pt["dtype"]), self.block_n(pt, cfg), json.dumps(fields, sort_keys=True))

    def bytes_per_set(self, pt):
        return 3 * pt["M"] * pt["N"] * torch.finfo(pt["dtype"]).bits // 8

    def setup(self, pt, n_sets, warm=False):
        M, N, dtype = pt["M"], pt["N"], pt["dtype"]
        st = dict(pt=pt, sets=[])
        for _ in range(n_sets):
            s = dict(x=torch.randn(M, N, device=DEVICE, dtype=dtype), dy=torch.randn(M, N, device=DEVICE, dtype=dtype),
                     w=(1 + 0.1 * torch.randn(N, device=DEVICE)).to(dtype), b=(0.1 * torch.randn(N, device=DEVICE)).to(dtype))
            self.prepare(s)
            st["sets"].append(s)
        return st

    def check(self, kind, cfg, st):
        # The launchers allocate their outputs: poison the block the allocator will hand out.
        s = st["sets"][0]
        torch.full((s["x"].numel(),), NAN, device=DEVICE, dtype=s["x"].dtype)
        outs = self.run(kind, cfg, st, 0)
        ref = self._oracle(st)
        for n, t in zip(self.names[kind], outs):
            if not torch.isfinite(t).all():
                raise AssertionError(f"{n}: unwritten (NaN poison left) or non-finite elements")
            assert_2x_rule(n, t, ref["plain"][n], ref["oracle"][n], dtype=st["pt"]["dtype"])

    def _oracle(self, st):
        if "oracle" not in st:
            s, res = st["sets"][0], {}
            for name, dtype in (("oracle", torch.float32), ("plain", st["pt"]["dtype"])):
                leaves = [s[n].to(dtype).requires_grad_() for n in self.leaves]
                y = self.reference(*leaves)
                res[name] = dict(zip(self.names["fwd"] + self.names["bwd"], (y, *torch.autograd.grad(y, leaves, s["dy"].to(dtype)))))
            st["oracle"] = res
        return st["oracle"]


class LayerNormTarget(RowTarget):
    family, module, gpt2_width, dry_widths = "layer_norm", L, 768, (96,)
    names = {"fwd": ("y",), "bwd": ("dx", "dweight", "dbias")}
    leaves = ("x", "w", "b")

    def key(self, pt):
        return L.tuning_key(pt["M"], pt["N"], pt["dtype"])

    def block_n(self, pt, cfg):
        return 1 << (pt["N"] - 1).bit_length()

    def prepare(self, s):
        x = s["x"].float()
        s["mean"], s["rstd"] = x.mean(1), torch.rsqrt(x.var(1, unbiased=False) + 1e-5)

    def reference(self, x, w, b):
        return F.layer_norm(x, (x.shape[1],), w, b, 1e-5)

    def run(self, kind, cfg, st, i):
        s = st["sets"][i]
        if kind == "fwd":
            return L.launch_with_config("fwd", cfg, x=s["x"], weight=s["w"], bias=s["b"], eps=1e-5)[:1]
        return L.launch_with_config("bwd", cfg, dy=s["dy"], x=s["x"], weight=s["w"], bias=s["b"], mean=s["mean"], rstd=s["rstd"])


class BiasGeluTarget(RowTarget):
    family, module, gpt2_width, dry_widths = "bias_gelu", G, 3072, (96,)
    names = {"fwd": ("y",), "bwd": ("dx", "dbias")}
    leaves = ("x", "b")
    widths = (3072, 4096, 768, 1024, 1600)

    def key(self, pt):
        return G.tuning_key(pt["M"], pt["N"], pt["dtype"], "none")

    def block_n(self, pt, cfg):
        return cfg["BLOCK_N"]

    def prepare(self, s):
        pass

    def reference(self, x, b):
        return reference.bias_gelu(x, b)

    def run(self, kind, cfg, st, i):
        s = st["sets"][i]
        if kind == "fwd":
            return (G.launch_with_config("fwd", cfg, x=s["x"], bias=s["b"]),)
        return G.launch_with_config("bwd", cfg, dy=s["dy"], x=s["x"], bias=s["b"])


TARGETS = (AttentionTarget, LayerNormTarget, BiasGeluTarget)


def work_items(targets):
    """[(target, point, kind, config)] in priority order (tier, then ladder position)."""
    points = [(pt["tier"], n, t, pt) for t in targets for n, pt in enumerate(t.points())]
    points.sort(key=lambda p: (p[0], p[1], TARGETS.index(type(p[2]))))
    return [(t, pt) for _, _, t, pt in points]


# ---------------------------------------------------------------------------------------------
# timing


class Timer:
    def __init__(self, reps):
        self.reps = reps
        if DEVICE.type == "cuda":
            props = torch.cuda.get_device_properties(DEVICE)
            self.l2 = getattr(props, "L2_cache_size", 0) or 64 << 20
            self.flush = torch.empty(2 * self.l2 // 4, dtype=torch.int32, device=DEVICE)
            self.spin = int(getattr(props, "clock_rate", 1_800_000) * 1e3 * 50e-6)  # ~50 us of GPU cycles
        else:
            self.l2 = 1 << 20

    def sets_for(self, nbytes):
        """Input copies to rotate among: enough for twice the L2, at most 4."""
        return max(1, min(4, math.ceil(2 * self.l2 / max(1, nbytes))))

    def median_ms(self, fn, n_sets):
        fn(0)  # the first launch loads (or compiles) the kernel
        if DEVICE.type != "cuda":
            times = []
            for i in range(self.reps):
                t = time.perf_counter()
                fn(i % n_sets)
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)
        fn(1 % n_sets)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        sleep = getattr(torch.cuda, "_sleep", None)
        for i in range(self.reps):
            self.flush.zero_()
            if sleep is not None:
                sleep(self.spin)
            starts[i].record()
            fn(i % n_sets)
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


# ---------------------------------------------------------------------------------------------
# the sweep


def device_identity():
    if DEVICE.type != "cuda":
        return DRY_DEVICE
    return torch.cuda.get_device_name(DEVICE), tuple(torch.cuda.get_device_capability(DEVICE))


def driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def new_table(targets, args, started):
    name, cap = device_identity()
    props = torch.cuda.get_device_properties(DEVICE) if DEVICE.type == "cuda" else None
    return {
        "schema": tuning.SCHEMA,
        "device": {"name": name, "capability": list(cap)},
        "provenance": {
            "date": started.isoformat(timespec="seconds"),
            "dry_run": args.dry_run,
            "sms": props.multi_processor_count if props else None,
            "l2_bytes": getattr(props, "L2_cache_size", None) if props else None,
            "driver": driver_version() if props else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "python": platform.python_version(),
            "command": "python scripts/tune.py " + " ".join(sys.argv[1:]),
            "method": f"median of {args.reps} CUDA-event-timed runs, L2 flushed, inputs rotated; winner checked by the 2x rule",
            "complete": False, "elapsed_s": 0.0, "points": {"done": 0, "total": 0}, "rejected": [], "errors": [],
        },
        "kernels": {f"{t.family}.{kind}": {"source": tuning.source_hash(t.family), "entries": {}}
                    for t in targets for kind in t.module.TUNABLE},
    }


def write_table(table, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def tune_point(target, pt, timer, table, log):
    """Time every candidate of every kernel of one point; record the fastest that checks out."""
    n_sets = timer.sets_for(target.bytes_per_set(pt))
    st = target.setup(pt, n_sets)
    prov = table["provenance"]
    for kind in target.module.TUNABLE:
        name, fields_of = f"{target.family}.{kind}", target.module.config_fields
        candidates = target.candidates(pt, kind)
        timings = []
        for cfg in candidates:
            try:
                ms = timer.median_ms(lambda i, cfg=cfg, kind=kind, st=st: target.run(kind, cfg, st, i), n_sets)
                timings.append((ms, cfg))
            except Exception as e:  # a candidate that fails to compile or launch is reported, not fatal
                prov["errors"].append(f"{name} {target.describe(pt)} {fields_of(cfg)}: {type(e).__name__}: {e}"[:400])
        if not timings:
            continue
        default_ms = next((ms for ms, c in timings if c is candidates[0]), None)
        for ms, cfg in sorted(timings, key=lambda x: x[0]):
            fields = fields_of(cfg)
            try:
                target.check(kind, cfg, st)
            except AssertionError as e:
                prov["rejected"].append(f"{name} {target.describe(pt)} {fields}: {e}"[:400])
                continue
            table["kernels"][name]["entries"][tuning.key_string(target.key(pt))] = {
                "config": fields, "ms": round(ms, 5),
                "default_ms": None if default_ms is None else round(default_ms, 5),
                "speedup": None if default_ms is None else round(default_ms / ms, 3),
                "timings": [[fields_of(c), round(t, 5)] for t, c in timings],
            }
            log(f"  {name:20s} {target.describe(pt):32s} best {fields} {ms:.4f} ms"
                + ("" if default_ms is None else f" (default {default_ms:.4f} ms, x{default_ms / ms:.2f})"))
            break
    del st
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def warm_shard(targets, index, count, log):
    """Launch every (point, kernel, config) of the compile groups of shard ``index`` once."""
    done = 0
    for target, pt in work_items(targets):
        mine = [(kind, cfg) for kind in target.module.TUNABLE for cfg in target.candidates(pt, kind)
                if zlib.crc32(repr(target.compile_group(pt, kind, cfg)).encode()) % count == index]
        if not mine:
            continue
        st = target.setup(pt, 1, warm=True)
        for kind, cfg in mine:
            try:
                target.run(kind, cfg, st, 0)
                done += 1
            except Exception as e:  # reported again, with the config, by the timing process
                log(f"warm-up {target.family}.{kind} {target.describe(pt)}: {type(e).__name__}: {e}"[:300])
        del st
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    log(f"warm-up shard {index}/{count}: {done} launches")


def warm_up(args, deadline, log):
    """Run the warm-up shards in parallel processes; stop waiting at ``deadline``."""
    n = args.workers
    cmd = [sys.executable, os.path.abspath(__file__), "--out", args.out, "--reps", "1"]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--only", args.only] if args.only else []
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/{n}"]) for i in range(n)]
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            log(f"warm-up worker {p.pid} stopped at its deadline")
    return sum(p.returncode == 0 for p in procs)


# ---------------------------------------------------------------------------------------------
# --backends: which backend auto runs the GEMM ops on


class BackendPoint:
    """One op at one shape: its inputs, the upstream gradient, the backend auto runs without a
    measurement (``default``), the table key (the op's own, fastgpt.ops.*._auto_order)."""

    def __init__(self, op, tokens, C, dtype, default):
        from fastgpt.ops import _extension

        self.op, self.default, self.dtype = op, default, dtype
        kw = dict(device=DEVICE, dtype=dtype)

        def weight(rows, cols):
            return torch.randn(rows, cols, **kw) / cols**0.5

        x = torch.randn(tokens, C, **kw)
        if op == "qkv_projection":
            T = min(1024, tokens)
            self.inputs = [x.view(tokens // T, T, C), weight(3 * C, C), torch.randn(3 * C, **kw) * 0.1]
            self.extra, out = (C // 64,), (3, tokens // T, C // 64, T, 64)
            self.key = _extension.qkv_key(self.inputs[0], C // 64)
        elif op == "linear_bias_gelu":
            self.inputs, self.extra, out = [x, weight(4 * C, C), torch.randn(4 * C, **kw) * 0.1], (), (tokens, 4 * C)
            self.key = _extension.fc_key(x, 4 * C)
        else:
            self.inputs = [x, weight(4 * C, C), torch.randn(4 * C, **kw) * 0.1, weight(C, 4 * C), torch.randn(C, **kw) * 0.1]
            self.extra, out = (), (tokens, C)
            self.key = _extension.fc_key(x, 4 * C)
        self.dy = torch.randn(*out, **kw)
        self.describe = f"{op} tokens={tokens} C={C} {_dtype_name(dtype)}"

    def call(self, backend, xs):
        import fastgpt

        with fastgpt.use_backend(**{self.op: backend}):
            y = getattr(fastgpt.ops, self.op)(*xs, *self.extra)
        return torch.stack(y) if isinstance(y, tuple) else y

    def step(self, backend):
        """fwd+bwd once."""
        xs = [t.detach().requires_grad_() for t in self.inputs]
        torch.autograd.grad(self.call(backend, xs), xs, self.dy)

    def check(self, backend):
        check_2x_rule(lambda xs, kernel: self.call(backend if kernel else "reference", xs), self.inputs, self.dy,
                      self.dtype, ("y",) + tuple(f"d{i}" for i in range(len(self.inputs))))


def backend_points(dry):
    if dry:
        return [BackendPoint(op, 64, 64, torch.float32, default) for op, default in
                (("mlp", "reference"), ("linear_bias_gelu", "reference"), ("qkv_projection", "reference"))]
    return [BackendPoint(op, 16384, C, torch.bfloat16, default) for C in (768, 1600) for op, default in
            (("mlp", "triton"), ("qkv_projection", "reference"), ("linear_bias_gelu", "triton"))]


def tune_backends(args, log):
    """Time each point's ``cuda`` backend against its default; merge the choices into the table."""
    from fastgpt.ops._extension import _C

    t0, deadline = time.time(), time.time() + args.budget
    if _C is None or (DEVICE.type == "cuda" and not _C.cuda_built()):
        log("tune --backends: fastgpt._C has no CUDA part here: nothing to time")
        return 1
    name, cap = device_identity()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, tuning.table_name(name, cap))
    table = None
    if os.path.exists(path):
        with open(path) as f:
            table = json.load(f)
    if table is None or tuning.validate(table) is not None or table["device"] != {"name": name, "capability": list(cap)}:
        table = new_table([], args, datetime.datetime.now(datetime.timezone.utc))
    table.setdefault("backends", {})
    timer = Timer(args.reps)
    for pt in backend_points(args.dry_run):
        if time.time() > deadline:
            log("tune --backends: budget spent")
            break
        ms = {}
        for backend in (pt.default, "cuda"):
            try:
                ms[backend] = timer.median_ms(lambda i, b=backend, pt=pt: pt.step(b), 1)
            except Exception as e:  # reported, never fatal: the default stays the choice
                log(f"  ! {pt.describe} {backend}: {type(e).__name__}: {e}"[:400])
        choice, note = pt.default, ""
        if "cuda" in ms and pt.default in ms and ms["cuda"] < 0.97 * ms[pt.default]:
            try:
                pt.check("cuda")
                choice = "cuda"
            except AssertionError as e:
                note = f" (cuda rejected: {str(e).splitlines()[0][:200]})"
        entry = {"backend": choice, "ms": {b: round(t, 5) for b, t in ms.items()}}
        if len(ms) == 2:
            entry["speedup"] = round(ms[pt.default] / ms["cuda"], 3)
        choices = table["backends"].setdefault(pt.op, {"source": _C.sources_sha256(), "entries": {}})
        choices["source"] = _C.sources_sha256()
        choices["entries"][tuning.key_string(pt.key)] = entry
        write_table(table, path)
        log(f"  {pt.describe:40s} -> {choice}  " + ", ".join(f"{b} {t:.4f} ms" for b, t in ms.items()) + note)
    log(f"tune --backends: {sum(len(c['entries']) for c in table['backends'].values())} choices in "
        f"{time.time() - t0:.0f} s -> {path}")
    return 0


def main(args):
    def log(msg):
        print(msg, flush=True)

    if args.backends:
        torch.manual_seed(0)
        return tune_backends(args, log)

    families = set(filter(None, args.only.split(",")))
    targets = [T(args.dry_run) for T in TARGETS if not families or T.family in families]
    torch.manual_seed(0)
    if args.shard:
        index, count = (int(x) for x in args.shard.split("/"))
        warm_shard(targets, index, count, log)
        return 0

    t0 = time.time()
    deadline = t0 + args.budget
    started = datetime.datetime.now(datetime.timezone.utc)
    os.makedirs(args.out, exist_ok=True)
    name, cap = device_identity()
    path = os.path.join(args.out, tuning.table_name(name, cap))
    table = new_table(targets, args, started)
    items = work_items(targets)
    table["provenance"]["points"]["total"] = len(items)
    write_table(table, path)
    log(f"tune: {name} (sm_{cap[0]}{cap[1]}), {len(items)} points, budget {args.budget:.0f} s -> {path}")

    workers = (os.cpu_count() or 2) - 2 if args.workers is None else args.workers
    args.workers = max(0, workers)
    if args.workers:
        ok = warm_up(args, t0 + 0.5 * args.budget, log)
        log(f"tune: compile warm-up, {ok}/{args.workers} workers finished, {time.time() - t0:.0f} s")

    timer = Timer(args.reps)
    for n, (target, pt) in enumerate(items):
        if time.time() > deadline:
            log(f"tune: budget spent after {n} of {len(items)} points")
            break
        tune_point(target, pt, timer, table, log)
        prov = table["provenance"]
        prov["points"]["done"] = n + 1
        prov["complete"] = n + 1 == len(items)
        prov["elapsed_s"] = round(time.time() - t0, 1)
        write_table(table, path)
    prov = table["provenance"]
    log(f"tune: {prov['points']['done']}/{prov['points']['total']} points in {time.time() - t0:.0f} s, "
        f"{sum(len(k['entries']) for k in table['kernels'].values())} entries, "
        f"{len(prov['rejected'])} rejected winners, {len(prov['errors'])} failed candidates -> {path}")
    for line in prov["rejected"][:5] + prov["errors"][:5]:
        log(f"  ! {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
