"""Ahead-of-time compile of the attention kernels for sm_80 and sm_90 (no GPU needed).

Every config that ``_fwd_configs`` / ``_bwd_dkdv_configs`` / ``_bwd_dq_configs`` yields for a
GPT-2 shape (T = 1024, bf16) after pruning is compiled, with and without dropout, for
head dims 64 and 128, and must neither spill registers nor exceed the target's shared memory.
The fp32 choice of the launchers is compiled too. The head-dim strides are passed as the
constant 1, as Triton's launcher specialises them at run time; the kernels state the rest of
the alignment contract themselves (see ``_aligned16`` in the kernel module), so what is
compiled here is what runs.

The GPU machine's Triton (3.6) compiles the launchers' GPT-2 choices for both archs and the
heaviest variant (head dim 128 with dropout) on sm_90 every time; with FASTGPT_AOT_FULL=1 the
full ladder runs under it as well (tests/aot.py).
"""
import pytest
import torch

from aot import SHARED_LIMIT, TRITON_36, TRITONS, assert_fits, compile_for_target, triton_id
from fastgpt.kernels import attention as A

T = 1024
KERNELS = {
    "fwd": A._attention_fwd_kernel,
    "dkdv": A._attention_bwd_dkdv_kernel,
    "dq": A._attention_bwd_dq_kernel,
}
FP32_PTRS = {"LSE_ptr", "DELTA_ptr"}
FLOAT_ARGS = {"qk_scale", "sm_scale", "dropout_p", "keep_scale"}


def _signature_and_constexprs(kernel, dtype, constexprs):
    signature, constexprs = {}, dict(constexprs)
    for name in kernel.arg_names:
        if name in constexprs:
            continue
        if name.startswith("stride_") and name.endswith("_d"):
            constexprs[name] = 1
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FP32_PTRS else f"*{dtype}"
        elif name == "seed":
            signature[name] = "i64"
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature, constexprs


def _compile(kind, cfg, arch, head_dim, dropout, dtype="bf16", triton_path=None):
    kernel = KERNELS[kind]
    signature, constexprs = _signature_and_constexprs(kernel, dtype, dict(
        cfg.kwargs, HEAD_DIM=head_dim, CAUSAL=True, DROPOUT=dropout,
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32"))
    info = compile_for_target(kernel, signature, constexprs, arch, cfg.num_warps, cfg.num_stages, triton_path=triton_path)
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    assert_fits(info, f"attention {kind} {dtype} hs={head_dim} dropout={dropout} "
                      f"BLOCK_M={bm} BLOCK_N={bn}")
    return info


@pytest.mark.slow  # about 3.5 minutes for all 24 cases on a cold Triton cache, 2 cores
@pytest.mark.parametrize("triton_path", TRITONS, ids=triton_id)
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("arch", [80, 90])
def test_every_pruned_config_fits(arch, head_dim, kind, dropout, triton_path):
    configs = A.config_candidates(kind, arch, SHARED_LIMIT[arch], head_dim, torch.bfloat16, dropout, T, T)
    assert configs, "the prune filter left no config"
    for cfg in configs:
        _compile(kind, cfg, arch, head_dim, dropout, triton_path=triton_path)


@pytest.mark.parametrize("head_dim,dropout,arch", [(64, False, 80), (64, False, 90), (128, True, 90)],
                         ids=["hs64-sm80", "hs64-sm90", "hs128-dropout-sm90"])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_launcher_choice_compiles_under_triton_36(kind, head_dim, dropout, arch):
    """What the launchers run at GPT-2's shape, compiled by the GPU machine's Triton."""
    cfg = A.config_candidates(kind, arch, SHARED_LIMIT[arch], head_dim, torch.bfloat16, dropout, T, T)[0]
    assert _compile(kind, cfg, arch, head_dim, dropout, triton_path=TRITON_36)["triton"] == "3.6.0"


@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("arch", [80, 90])
def test_fp32_choice_fits(arch, head_dim, kind, monkeypatch):
    # The launcher's fp32 pick, as _pick_config makes it on a GPU of this arch.
    monkeypatch.setattr(A, "device_target", lambda device: (arch, SHARED_LIMIT[arch]))
    cfg = A._pick_config(kind, torch.device("cuda", 0), head_dim, torch.float32, False, T, T)
    _compile(kind, cfg, arch, head_dim, False, dtype="fp32")


@pytest.mark.parametrize("triton_path", [None, TRITON_36], ids=triton_id)
@pytest.mark.parametrize("arch", [80, 90])
def test_preprocess_and_mask_fit(arch, triton_path):
    kernel = A._attention_bwd_preprocess_kernel
    signature, constexprs = _signature_and_constexprs(kernel, "bf16",
                                                      {"BLOCK_M": 64, "HEAD_DIM": 128})
    info = compile_for_target(kernel, signature, constexprs, arch, 4, 1, triton_path=triton_path)
    assert_fits(info, "attention bwd preprocess hs=128")
    mask = A._attention_dropout_mask_kernel
    info = compile_for_target(mask, {"MASK_ptr": "*i1", "Tq": "i32", "Tk": "i32", "seed": "i64", "dropout_p": "fp32"},
                              {"BLOCK_M": 32, "BLOCK_N": 32}, arch, 4, 1, triton_path=triton_path)
    assert_fits(info, "attention dropout mask")
