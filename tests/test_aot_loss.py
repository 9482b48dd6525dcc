"""The cross-entropy kernel of fastgpt.ops.linear_cross_entropy, compiled ahead of time for sm_80
and sm_90 with the launch configs the launcher picks: no register spills, shared memory within
the per-block limit. Runs on the CPU machine (see tests/aot.py). GPT-2's launch also compiles under
the GPU machine's Triton (3.6) every time, and every job does with FASTGPT_AOT_FULL=1."""
import pytest

from aot import TRITON_36, TRITONS, assert_fits, compile_for_target, triton_id
from fastgpt.kernels import cross_entropy

ARCHS = (80, 90)


def _signature(dt):
    return {"Logits_ptr": "*" + dt, "Targets_ptr": "*i64", "Loss_ptr": "*fp32", "RowScale_ptr": "*fp32",
            "stride_logits_row": "i32", "V": "i32", "ignore_index": "i32"}


def _jobs():
    """(id, signature, constexprs, num_warps): GPT-2's vocabulary (the widest block) in bf16 (how
    GPT-2 trains) and fp32 (the most registers), loss only and with the gradient, the per-row
    scale of reduction='none'; and a small vocabulary (one narrow block)."""
    jobs = []
    for V, dt, grad, row_scale in ((50304, "bf16", True, False), (50304, "bf16", False, False),
                                   (50304, "fp32", True, False), (50304, "fp16", True, True), (65, "bf16", True, False)):
        cfg = cross_entropy.launch_config(V)
        constexprs = {"BLOCK_V": cfg["BLOCK_V"], "HAS_ROW_SCALE": row_scale, "COMPUTE_GRAD": grad}
        name = f"ce-{dt}-BV{cfg['BLOCK_V']}-w{cfg['num_warps']}{'-grad' if grad else ''}{'-rowscale' if row_scale else ''}"
        jobs.append((name, _signature(dt), constexprs, cfg["num_warps"]))
    return jobs


JOBS = _jobs()


def _check(name, signature, constexprs, num_warps, arch, triton_path=None):
    info = compile_for_target(cross_entropy._cross_entropy_fwd_bwd_kernel, signature, constexprs, arch=arch,
                              num_warps=num_warps, num_stages=1, triton_path=triton_path, analyze=True)
    assert info["n_regs"] > 0, f"{name}: cuobjdump reported no registers: {info}"
    assert_fits(info, name)
    return info


@pytest.mark.parametrize("triton_path", TRITONS, ids=triton_id)
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("name,signature,constexprs,num_warps", JOBS, ids=[j[0] for j in JOBS])
def test_kernel_fits_target(name, signature, constexprs, num_warps, arch, triton_path):
    _check(name, signature, constexprs, num_warps, arch, triton_path)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_gpt2_launch_compiles_under_triton_36(arch):
    assert _check(*JOBS[0], arch, TRITON_36)["triton"].startswith("3.6")
