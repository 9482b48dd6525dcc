"""Every LayerNorm and bias+GELU kernel, compiled ahead of time for sm_80 and sm_90 with the
launch configs the launchers pick at GPT-2 shapes: no register spills, shared memory within
the per-block limit. Runs on the CPU machine (see tests/aot.py).

Also: one launch of each kernel under the GPU machine's Triton (3.6); every config a committed
tuning table (kernels/tuned/) names, for its arch; and with FASTGPT_AOT_FULL=1 every tuning
candidate at the widths scripts/tune.py sweeps, under both Tritons.
"""
import glob
import json
import os

import pytest

from aot import TRITON_36, TRITONS, assert_fits, compile_for_target, triton_id
from fastgpt.kernels import _reduce, bias_gelu, layer_norm, tuning

ARCHS = (80, 90)
# n_embd of GPT-2 small/medium/large/xl, the 4x MLP width of small, and the widest supported.
LN_WIDTHS = (768, 1024, 1600, 3072, layer_norm.MAX_N)
# The MLP hidden widths (4 * n_embd) of GPT-2 small/medium/large/xl, and an odd one.
GELU_WIDTHS = (3072, 4096, 6400, 768, 1023)


def _ptr(dtype):
    return "*" + dtype


def ln_signature(kind, dt):
    if kind == "fwd":
        return {"X_ptr": _ptr(dt), "Y_ptr": _ptr(dt), "W_ptr": _ptr(dt), "B_ptr": _ptr(dt),
                "Mean_ptr": "*fp32", "Rstd_ptr": "*fp32", "stride_x_row": "i32",
                "stride_y_row": "i32", "M": "i32", "N": "i32", "eps": "fp32"}
    return {"DY_ptr": _ptr(dt), "X_ptr": _ptr(dt), "W_ptr": _ptr(dt), "Mean_ptr": "*fp32",
            "Rstd_ptr": "*fp32", "DX_ptr": _ptr(dt), "DW_part_ptr": "*fp32",
            "DB_part_ptr": "*fp32", "stride_dy_row": "i32", "stride_x_row": "i32",
            "stride_dx_row": "i32", "stride_part_row": "i32", "M": "i32", "N": "i32",
            "ROWS_PER_PROG": "i32"}


def ln_jobs():
    """(id, kernel, signature, constexprs, num_warps) for every distinct LayerNorm launch."""
    jobs = {}
    for N in LN_WIDTHS:
        cfg = layer_norm.launch_config(N)
        # bf16 is how GPT-2 trains; fp32 stresses registers most (no packed loads).
        for dt in ("bf16", "fp32") if N == layer_norm.MAX_N else ("bf16",):
            fwd = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": True, "HAS_B": True}
            jobs[("fwd", dt, tuple(fwd.items()), cfg["num_warps"])] = (
                f"ln_fwd-{dt}-BN{cfg['BLOCK_N']}-BM{cfg['BLOCK_M']}-w{cfg['num_warps']}",
                layer_norm._layer_norm_fwd_kernel, ln_signature("fwd", dt), fwd, cfg["num_warps"])
            dx = {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": True, "HAS_DW": True,
                  "HAS_DB": True}
            jobs[("dx", dt, tuple(dx.items()), cfg["num_warps"])] = (
                f"ln_bwd_dx-{dt}-BN{cfg['BLOCK_N']}-BM{cfg['BWD_BLOCK_M']}-w{cfg['num_warps']}",
                layer_norm._layer_norm_bwd_dx_kernel, ln_signature("dx", dt), dx, cfg["num_warps"])
    # The variants without weight/bias (nanoGPT's bias=False and the LN without affine) must
    # compile too: one width is enough, they only drop work.
    cfg = layer_norm.launch_config(768)
    jobs["fwd-noaffine"] = (
        "ln_fwd-bf16-noaffine", layer_norm._layer_norm_fwd_kernel, ln_signature("fwd", "bf16"),
        {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": False, "HAS_B": False},
        cfg["num_warps"])
    jobs["dx-noaffine"] = (
        "ln_bwd_dx-bf16-noaffine", layer_norm._layer_norm_bwd_dx_kernel, ln_signature("dx", "bf16"),
        {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": False, "HAS_DW": False, "HAS_DB": False},
        cfg["num_warps"])
    jobs["dx-weight-only"] = (
        "ln_bwd_dx-bf16-weight-only", layer_norm._layer_norm_bwd_dx_kernel, ln_signature("dx", "bf16"),
        {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": True, "HAS_DW": True, "HAS_DB": False},
        cfg["num_warps"])
    return list(jobs.values())


def gelu_signature(kind):
    if kind == "fwd":
        return {"X_ptr": "*bf16", "B_ptr": "*bf16", "Y_ptr": "*bf16", "stride_x_row": "i32",
                "stride_y_row": "i32", "M": "i32", "N": "i32"}
    return {"DY_ptr": "*bf16", "X_ptr": "*bf16", "B_ptr": "*bf16", "DX_ptr": "*bf16",
            "DB_part_ptr": "*fp32", "stride_dy_row": "i32", "stride_x_row": "i32",
            "stride_dx_row": "i32", "M": "i32", "N": "i32", "ROWS_PER_PROG": "i32"}


def gelu_jobs():
    """(id, kernel, signature, constexprs, num_warps) for every distinct bias+GELU launch."""
    jobs = {}
    for N in GELU_WIDTHS:
        cfg = bias_gelu.launch_config(N)
        for tanh in (False, True):
            approx = "tanh" if tanh else "erf"
            fwd = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": True, "APPROX_TANH": tanh}
            jobs[("fwd", tuple(fwd.items()))] = (
                f"gelu_fwd-{approx}-BN{cfg['BLOCK_N']}-BM{cfg['BLOCK_M']}",
                bias_gelu._bias_gelu_fwd_kernel, gelu_signature("fwd"), fwd, cfg["num_warps"])
            bwd = {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": True, "APPROX_TANH": tanh}
            jobs[("bwd", tuple(bwd.items()))] = (
                f"gelu_bwd-{approx}-BN{cfg['BLOCK_N']}-BM{cfg['BWD_BLOCK_M']}",
                bias_gelu._bias_gelu_bwd_kernel, gelu_signature("bwd"), bwd, cfg["num_warps"])
    cfg = bias_gelu.launch_config(3072)
    jobs["bwd-nobias"] = (
        "gelu_bwd-erf-nobias", bias_gelu._bias_gelu_bwd_kernel, gelu_signature("bwd"),
        {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": False, "APPROX_TANH": False},
        cfg["num_warps"])
    jobs["fwd-nobias"] = (
        "gelu_fwd-erf-nobias", bias_gelu._bias_gelu_fwd_kernel, gelu_signature("fwd"),
        {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": False, "APPROX_TANH": False},
        cfg["num_warps"])
    return list(jobs.values())


def reduce_jobs():
    """The column sum that reduces both kernels' per-program partials, at every block width."""
    sig = {"Part_ptr": "*fp32", "Out_ptr": "*bf16", "Out2_ptr": "*bf16", "G": "i32", "N": "i32", "N1": "i32"}
    return [(f"column_sum-BN{bn}", _reduce._column_sum_kernel, sig,
             {"BLOCK_G": _reduce.TILE_ELEMENTS // bn, "BLOCK_N": bn, "HAS_OUT2": True}, _reduce.NUM_WARPS)
            for bn in _reduce.BLOCK_NS]


JOBS = ln_jobs() + gelu_jobs() + reduce_jobs()


def _check(name, kernel, signature, constexprs, num_warps, arch, triton_path=None):
    info = compile_for_target(kernel, signature, constexprs, arch=arch, num_warps=num_warps, num_stages=1,
                              triton_path=triton_path, analyze=True)
    assert info["n_regs"] > 0, f"{name}: cuobjdump reported no registers: {info}"
    assert_fits(info, name)
    return info


@pytest.mark.parametrize("triton_path", TRITONS, ids=triton_id)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("name,kernel,signature,constexprs,num_warps", JOBS, ids=[j[0] for j in JOBS])
def test_kernel_fits_target(name, kernel, signature, constexprs, num_warps, arch, triton_path):
    _check(name, kernel, signature, constexprs, num_warps, arch, triton_path)


# One launch of each kernel (GPT-2 small's widths) under the GPU machine's Triton.
TRITON_36_JOBS = [j for j in JOBS if j[0] in ("ln_fwd-bf16-BN1024-BM2-w4", "ln_bwd_dx-bf16-BN1024-BM4-w4",
                                                "gelu_fwd-erf-BN1024-BM4", "gelu_bwd-erf-BN1024-BM2", "column_sum-BN32")]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("name,kernel,signature,constexprs,num_warps", TRITON_36_JOBS, ids=[j[0] for j in TRITON_36_JOBS])
def test_kernel_compiles_under_triton_36(name, kernel, signature, constexprs, num_warps, arch):
    assert _check(name, kernel, signature, constexprs, num_warps, arch, TRITON_36)["triton"] == "3.6.0"


def test_triton_36_jobs_cover_every_kernel():
    assert len(TRITON_36_JOBS) == 5 and {j[1] for j in TRITON_36_JOBS} == {j[1] for j in JOBS}


def tuned_jobs(family, kind, N, cfg):
    """(name, kernel, signature, constexprs, num_warps) of the launch a tuning config makes
    (programs_per_sm only sizes the grid)."""
    tile = "-".join(f"{k}{v}" for k, v in cfg.items() if k != "programs_per_sm")
    if family == "layer_norm":
        block_n = 1 << (N - 1).bit_length()
        if kind == "fwd":
            return (f"ln_fwd-BLOCK_N{block_n}-{tile}", layer_norm._layer_norm_fwd_kernel, ln_signature("fwd", "bf16"),
                    {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": block_n, "HAS_W": True, "HAS_B": True}, cfg["num_warps"])
        return (f"ln_bwd_dx-BLOCK_N{block_n}-{tile}", layer_norm._layer_norm_bwd_dx_kernel, ln_signature("dx", "bf16"),
                {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": block_n, "HAS_W": True, "HAS_DW": True, "HAS_DB": True}, cfg["num_warps"])
    kernel = bias_gelu._bias_gelu_fwd_kernel if kind == "fwd" else bias_gelu._bias_gelu_bwd_kernel
    return (f"gelu_{kind}-{tile}", kernel, gelu_signature(kind),
            {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": True, "APPROX_TANH": False}, cfg["num_warps"])


def _dedup(jobs):
    """One of each (arch, launch): the names spell out the tile, warps and flags."""
    return list({(arch, job[0]): (arch, job) for arch, job in jobs}.values())


def table_jobs():
    """(arch, job) for every norm config a committed tuning table names, on the table's arch."""
    jobs = []
    for path in sorted(glob.glob(os.path.join(tuning.PACKAGE_DIR, "*.json"))):
        with open(path) as f:
            table = json.load(f)
        arch = table["device"]["capability"][0] * 10 + table["device"]["capability"][1]
        for name, fam in table["kernels"].items():
            family, kind = name.split(".")
            if family not in ("layer_norm", "bias_gelu"):
                continue  # attention's configs are all among test_aot_attention's candidates
            for key, entry in fam["entries"].items():
                N = int(dict(kv.split("=") for kv in key.split(","))["N"])
                jobs.append((arch, tuned_jobs(family, kind, N, entry["config"])))
    return _dedup(jobs)


TABLE_JOBS = table_jobs()


@pytest.mark.parametrize("arch,job", TABLE_JOBS, ids=[f"sm{a}-{j[0]}" for a, j in TABLE_JOBS])
def test_tabled_configs_fit(arch, job):
    _check(*job, arch)


SWEEP_WIDTHS = (768, 1024, 1600, 3072, 4096)  # scripts/tune.py's


def candidate_jobs():
    jobs = []
    for family, module in (("layer_norm", layer_norm), ("bias_gelu", bias_gelu)):
        for kind in module.TUNABLE:
            for N in SWEEP_WIDTHS:
                for cfg in module.config_candidates(kind, N):
                    jobs += [(arch, tuned_jobs(family, kind, N, cfg)) for arch in ARCHS]
    return _dedup(jobs)


@pytest.mark.skipif(os.environ.get("FASTGPT_AOT_FULL") != "1", reason="every tuning candidate: set FASTGPT_AOT_FULL=1")
@pytest.mark.parametrize("triton_path", [None, TRITON_36], ids=triton_id)
def test_every_tuning_candidate_fits(triton_path):
    for arch, job in candidate_jobs():
        _check(*job, arch, triton_path)
