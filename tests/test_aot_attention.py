"""Ahead-of-time compile of the attention kernels for sm_80 and sm_90 (no GPU needed).

Each test compiles the configs that ``attention.pick_config`` picks -- the launchers' own
choice -- over a ladder of sequence lengths (T = 128 .. 16384, Tq = Tk and Tq < Tk, decode's
Tq = 1), deduplicated, and reads ptxas' and the SASS's verdict through ``scripts/sass_report.py``:
no register spills, no local memory, shared memory within the target's limit and within the
launcher's own estimate (which is what prunes the candidates), and on sm_90 no serialized wgmma
(ptxas' advisory C7515). On sm_90 fp16/bf16 the kernels load through TMA descriptors, which
the compile sees as ``tensordesc`` arguments.

The default run (about 30 compiles) covers what GPT-2 training and generation launch: hs = 64
and 128, bf16, causal with dropout on and off on both archs, sm_90's non-causal and decode
variants, fp32's; ``FASTGPT_AOT_SWEEP=1`` compiles every candidate of every list for hs in
{16, 32, 64, 128}, fp16 and bf16, causal and not, dropout on and off, on both archs (an hour
or so on 2 cores). Every config a committed tuning table (kernels/tuned/) names runs too.

The GPU machine's Triton (3.6, ``aot.TRITON_36``: scripts/env.sh installs it and sets
FASTGPT_TRITON36) compiles the GPT-2 picks on both archs, the preprocess and the dropout-mask
kernel in the default run, failing when FASTGPT_TRITON36 names a folder without it;
``FASTGPT_AOT_FULL=1`` compiles the whole default set under it as well.
"""
import dataclasses
import glob
import json
import os
from dataclasses import dataclass

import pytest
import torch

from aot import SHARED_LIMIT, TRITON_36, TRITONS, assert_fits, compile_for_target, sass_report, triton_id
from fastgpt.kernels import attention as A
from fastgpt.kernels import tuning

KERNELS = {
    "fwd": A._attention_fwd_kernel,
    "bwd": A._attention_bwd_kernel,
    "pre": A._attention_bwd_preprocess_kernel,
}
# The tile arguments of each kernel and the block constexpr their rows use (TMA block shape).
TILE_ROWS = {
    "fwd": {"Q_ptr": "BLOCK_M", "K_ptr": "BLOCK_N", "V_ptr": "BLOCK_N", "O_ptr": "BLOCK_M"},
    "bwd": {"Q_ptr": "BLOCK_M", "K_ptr": "BLOCK_N", "V_ptr": "BLOCK_N", "DO_ptr": "BLOCK_M", "DQ_ptr": "BLOCK_M",
            "DK_ptr": "BLOCK_N", "DV_ptr": "BLOCK_N"},
}
FLOAT_ARGS = {"qk_scale", "sm_scale", "dropout_p", "keep_scale"}
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
ELT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
# Sequence lengths (Tq, Tk): the ladder the issue names, KV-cache shapes and decode.
LADDER = [(t, t) for t in (128, 256, 512, 1024, 2048, 4096, 8192, 16384)]
SHAPES = LADDER + [(1, 1024), (1, 16384), (256, 1024), (1024, 4096), (97, 1000)]
SWEEP = os.environ.get("FASTGPT_AOT_SWEEP", "0") not in ("", "0")


@dataclass(frozen=True, order=True)
class Job:
    """One distinct compile: what the launcher would run for some shape."""
    kind: str
    arch: int
    head_dim: int
    dtype: str
    causal: bool
    dropout: bool
    cfg: tuple  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    tma: bool
    key_pad: bool = False

    @property
    def id(self):
        bm, bn, w, s = self.cfg
        return (f"{self.kind}-sm{self.arch}-hs{self.head_dim}-{self.dtype}-"
                f"{'causal' if self.causal else 'full'}-{'drop' if self.dropout else 'nodrop'}-"
                f"{bm}x{bn}w{w}s{s}{'-tma' if self.tma else ''}{'-keypad' if self.key_pad else ''}")


def _cfg_tuple(cfg):
    return (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)


def picked_jobs(archs, head_dims, dtypes, causals=(True, False), dropouts=(False, True),
                shapes=SHAPES, every_candidate=False):
    """The distinct (kernel, config) compiles the launchers pick over ``shapes``; with
    ``every_candidate`` every config of every candidate list instead."""
    jobs = set()
    for arch in archs:
        for hs in head_dims:
            for dtype in dtypes:
                tma = A.use_tma(arch, dtype)
                for causal in causals:
                    for dropout in dropouts:
                        for kind in ("fwd", "bwd"):
                            if every_candidate and dtype != torch.float32:
                                cfgs = A.candidates(kind, arch, hs, dropout)
                            else:
                                cfgs = [A.pick_config(kind, arch, hs, dtype, dropout, tq, tk,
                                                      SHARED_LIMIT[arch]) for tq, tk in shapes]
                            for cfg in cfgs:
                                jobs.add(Job(kind, arch, hs, DTYPES[dtype], causal, dropout,
                                             _cfg_tuple(cfg), tma))
    return sorted(jobs)


def signature(job):
    """(signature, constexprs) of the job's kernel, as the launcher's arguments specialise it."""
    kernel = KERNELS[job.kind]
    bm, bn, _, _ = job.cfg
    constexprs = dict(BLOCK_M=bm, HEAD_DIM=job.head_dim)
    if job.kind != "pre":
        constexprs.update(BLOCK_N=bn, CAUSAL=job.causal, DROPOUT=job.dropout, TMA=job.tma,
                          DOT_PRECISION="ieee" if job.dtype == "fp32" else "tf32")
    if job.kind == "fwd":
        constexprs["KEY_PAD"] = job.key_pad
    rows = {"BLOCK_M": bm, "BLOCK_N": bn}
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            continue
        if name in TILE_ROWS.get(job.kind, {}):
            sig[name] = (f"tensordesc<{job.dtype}[1, 1, {rows[TILE_ROWS[job.kind][name]]}, "
                         f"{job.head_dim}]>" if job.tma else f"*{job.dtype}")
        elif name in ("LSE_ptr", "DELTA_ptr"):
            sig[name] = "*fp32"
        elif name == "PAD_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{job.dtype}"
        elif name == "seed":
            sig[name] = "i64"
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig, constexprs


def compile_job(job, triton_path=None):
    sig, constexprs = signature(job)
    _, _, warps, stages = job.cfg
    return compile_for_target(KERNELS[job.kind], sig, constexprs, job.arch, warps, stages,
                              analyze=True, triton_path=triton_path)


def check(job, info):
    """The verdict: no spills, local memory or C7515; shared memory within the limit and the
    launcher's estimate; on sm_90 the backward keeps >= 2 blocks per SM where the config list
    promises it."""
    assert_fits(info, job.id)
    if job.kind in ("fwd", "bwd"):
        estimate = A._shared_bytes(job.kind, A._cfg(*job.cfg), job.head_dim, ELT_BYTES[job.dtype])
        assert info["shared"] <= estimate, (
            f"{job.id}: {info['shared']} bytes of shared memory, over the launcher's estimate "
            f"{estimate}: the prune filter could pick a config that does not fit")
    if job.kind == "bwd" and job.arch >= 90 and job.head_dim <= 64:
        occ = info["analysis"]["occupancy"]
        assert occ["blocks"] >= 2, f"{job.id}: {occ} -- the backward should keep 2 blocks per SM"


def _default_jobs():
    # GPT-2 on sm_90: causal, dropout or not, at every length; not causal and decode's small
    # tiles without dropout (the loop structure is what matters for C7515, not the flag).
    jobs = picked_jobs([90], [64], [torch.bfloat16], shapes=LADDER, causals=(True,))
    jobs += picked_jobs([90], [64], [torch.bfloat16], causals=(False,), dropouts=(False,),
                        shapes=LADDER)
    jobs += picked_jobs([90], [64], [torch.bfloat16], dropouts=(False,), shapes=[(1, 1024)],
                        causals=(True,))
    jobs += picked_jobs([90], [128], [torch.bfloat16], causals=(True,), shapes=LADDER)
    jobs += picked_jobs([80], [64, 128], [torch.bfloat16], causals=(True,), shapes=LADDER)
    jobs += picked_jobs([80, 90], [64], [torch.float32], causals=(True,), dropouts=(False,),
                        shapes=LADDER[:1])
    # Left-padded generation (key_padding_start): prefill and decode on sm_90.
    jobs += [dataclasses.replace(j, key_pad=True) for j in
             picked_jobs([90], [64], [torch.bfloat16], causals=(True,), dropouts=(False,),
                         shapes=[(1024, 1024), (1, 1024)]) if j.kind == "fwd"]
    return sorted(set(jobs + tabled_jobs()))


def tabled_jobs():
    """The attention configs the committed tuning tables name, on their tables' archs: the
    launchers run them instead of ``pick_config``'s."""
    jobs = []
    for path in sorted(glob.glob(os.path.join(tuning.PACKAGE_DIR, "*.json"))):
        with open(path) as f:
            table = json.load(f)
        major, minor = table["device"]["capability"]
        arch = 90 if major >= 9 else 80
        for name, family in table["kernels"].items():
            if not name.startswith("attention."):
                continue
            for key, entry in family["entries"].items():
                k = dict(kv.split("=") for kv in key.split(","))
                c = entry["config"]
                jobs.append(Job(name.split(".")[1], arch, int(k["head_dim"]), DTYPES[getattr(torch, k["dtype"])],
                                k["causal"] == "1", k["dropout"] == "1",
                                (c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]), k["tma"] == "1"))
    return jobs


JOBS = _default_jobs()
SWEEP_JOBS = sorted(set(picked_jobs([80, 90], [16, 32, 64, 128], [torch.float16, torch.bfloat16],
                                    every_candidate=True)) - set(JOBS)) if SWEEP else []


@pytest.mark.slow  # ~30 compiles: 2-4 minutes on 2 cores with a cold Triton cache
@pytest.mark.parametrize("triton_path", TRITONS, ids=triton_id)
@pytest.mark.parametrize("job", JOBS, ids=[j.id for j in JOBS])
def test_picked_config_compiles_clean(job, triton_path):
    check(job, compile_job(job, triton_path))


@pytest.mark.skipif(not SWEEP, reason="set FASTGPT_AOT_SWEEP=1 for every candidate config")
@pytest.mark.parametrize("job", SWEEP_JOBS or [None], ids=[j.id for j in SWEEP_JOBS] or ["none"])
def test_every_candidate_compiles_clean(job):
    check(job, compile_job(job))


def test_forward_meets_the_register_target():
    """The sm_90 forward of GPT-2 training (hs = 64, bf16, causal) stays at or under 200
    registers with its wgmma pipelined (2 ARRIVE, 1 DEPBAR per KV step), TMA loads in the loop."""
    cfg = A.pick_config("fwd", 90, 64, torch.bfloat16, False, 1024, 1024, SHARED_LIMIT[90])
    job = Job("fwd", 90, 64, "bf16", True, False, _cfg_tuple(cfg), True)
    info = compile_job(job)
    check(job, info)
    assert info["n_regs"] <= 200, f"{job.id}: {info['n_regs']} registers"
    loop = sass_report.main_loop(info["analysis"]["sass"])
    assert loop["HGMMA"] > 0 and loop["UTMALDG"] > 0 and loop["LDGSTS"] == 0, loop
    assert loop["ARRIVE"] <= 2 and loop["DEPBAR"] <= 2, loop


@pytest.mark.parametrize("triton_path", [None, TRITON_36], ids=triton_id)
@pytest.mark.parametrize("arch", [80, 90])
def test_preprocess_and_mask_fit(arch, triton_path):
    job = Job("pre", arch, 128, "bf16", False, False, (64, 64, 4, 1), False)
    check(job, compile_job(job, triton_path))
    info = compile_for_target(A._attention_dropout_mask_kernel,
                              {"MASK_ptr": "*i1", "Tq": "i32", "Tk": "i32", "seed": "i64", "dropout_p": "fp32"},
                              {"BLOCK_M": 32, "BLOCK_N": 32}, arch, 4, 1, triton_path=triton_path)
    assert_fits(info, f"attention dropout mask sm_{arch}")


# GPT-2 training's picks (T = 1024, causal, bf16) under the GPU machine's Triton: sm_90 at both
# head dims with and without dropout (TMA, the newest code paths), sm_80 at hs = 64 without.
TRITON_36_JOBS = sorted({j for j in picked_jobs([90], [64, 128], [torch.bfloat16], causals=(True,), shapes=[(1024, 1024)])}
                        | {j for j in picked_jobs([80], [64], [torch.bfloat16], causals=(True,), dropouts=(False,),
                                                 shapes=[(1024, 1024)])})


# Known: under triton 3.6 (not 3.8) sm_80's hs <= 64 backward at (64, 64, 8 warps, 2 stages)
# spills 96 bytes at 255 registers. Strict: the day it compiles clean, this marker must go.
SPILLS_UNDER_36 = {Job("bwd", 80, 64, "bf16", True, False, (64, 64, 8, 2), False)}


@pytest.mark.parametrize("job", [pytest.param(j, marks=pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="spills under triton 3.6 (SPILLS_UNDER_36)"))
    if j in SPILLS_UNDER_36 else j for j in TRITON_36_JOBS], ids=[j.id for j in TRITON_36_JOBS])
def test_gpt2_picks_compile_with_triton36(job):
    info = compile_job(job, triton_path=TRITON_36)
    assert info["triton"].startswith("3.6"), info["triton"]
    check(job, info)
