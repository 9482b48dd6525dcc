"""Ahead-of-time compile of the attention kernels for sm_80 and sm_90 (no GPU needed).

Every config that ``_fwd_configs`` / ``_bwd_dkdv_configs`` / ``_bwd_dq_configs`` yields for a
GPT-2 shape (T = 1024, bf16) after pruning is compiled, with and without dropout, for
head dims 64 and 128, and must neither spill registers nor exceed the target's shared memory.
The fp32 choice of the launchers is compiled too. The head-dim strides are passed as the
constant 1, as Triton's launcher specialises them at run time; the kernels state the rest of
the alignment contract themselves (see ``_aligned16`` in the kernel module), so what is
compiled here is what runs.
"""
import pytest
import torch

from aot import SHARED_LIMIT, assert_fits, compile_for_target
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


def _compile(kind, cfg, arch, head_dim, dropout, dtype="bf16"):
    kernel = KERNELS[kind]
    signature, constexprs = _signature_and_constexprs(kernel, dtype, dict(
        cfg.kwargs, HEAD_DIM=head_dim, CAUSAL=True, DROPOUT=dropout,
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32"))
    info = compile_for_target(kernel, signature, constexprs, arch, cfg.num_warps, cfg.num_stages)
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    assert_fits(info, f"attention {kind} {dtype} hs={head_dim} dropout={dropout} "
                      f"BLOCK_M={bm} BLOCK_N={bn}")
    return info


@pytest.mark.slow  # about 3.5 minutes for all 24 cases on a cold Triton cache, 2 cores
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("arch", [80, 90])
def test_every_pruned_config_fits(arch, head_dim, kind, dropout):
    configs = A._prune_configs(kind, A._CONFIG_LISTS[kind](arch, head_dim, dropout), head_dim,
                               T, T, 2, SHARED_LIMIT[arch])
    assert configs, "the prune filter left no config"
    for cfg in configs:
        _compile(kind, cfg, arch, head_dim, dropout)


@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("arch", [80, 90])
def test_fp32_choice_fits(arch, head_dim, kind, monkeypatch):
    # The launcher's fp32 pick, as _pick_config makes it on a GPU of this arch.
    monkeypatch.setattr(A, "device_target", lambda device: (arch, SHARED_LIMIT[arch]))
    cfg = A._pick_config(kind, torch.device("cuda", 0), head_dim, torch.float32, False, T, T)
    _compile(kind, cfg, arch, head_dim, False, dtype="fp32")


@pytest.mark.parametrize("arch", [80, 90])
def test_preprocess_fits(arch):
    kernel = A._attention_bwd_preprocess_kernel
    signature, constexprs = _signature_and_constexprs(kernel, "bf16",
                                                      {"BLOCK_M": 64, "HEAD_DIM": 128})
    info = compile_for_target(kernel, signature, constexprs, arch, 4, 1)
    assert_fits(info, "attention bwd preprocess hs=128")
