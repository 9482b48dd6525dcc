"""fastgpt._C's qkv_projection (its C++ CPU twin here; the CUDA kernel on a GPU) against the
fp32 oracle: outputs and every gradient, awkward shapes, bad input, and the built device code."""
import os
import re
import shutil
import subprocess

import pytest
import torch

import fastgpt
from fastgpt import reference, use_backend
from fastgpt.ops import qkv_projection
from helpers import DEVICE, HAS_CUDA, assert_2x_rule

_C = pytest.importorskip("fastgpt._C")

SHAPES = [  # (B, T, C, H)
    (1, 1, 768, 12),
    (3, 97, 192, 3),
    (2, 17, 1024, 16),
    (3, 1, 192, 3),
]


def _inputs(B, T, C, dtype, bias, contiguous, device):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + C)
    base = torch.randn(B, T, 2 * C, generator=g) if not contiguous else torch.randn(B, T, C, generator=g)
    x = base[..., ::2] if not contiguous else base  # a strided view along C
    w = torch.randn(3 * C, C, generator=g) / C**0.5
    b = torch.randn(3 * C, generator=g) if bias else None
    return [t if t is None else t.to(device, dtype).requires_grad_() for t in (x, w, b)], x


@pytest.mark.parametrize("B,T,C,H", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_oracle(B, T, C, H, dtype, bias):
    contiguous = T != 97
    (x, w, b), _ = _inputs(B, T, C, dtype, bias, contiguous, DEVICE)
    leaves = [t for t in (x, w, b) if t is not None]
    grads_out = [torch.randn(B, H, T, C // H, device=DEVICE, dtype=dtype) for _ in range(3)]

    def run(fn, args):
        outs = fn(*args, H)
        g = torch.autograd.grad(outs, [a for a in args if a is not None], grads_out if args[0].dtype == dtype else [t.float() for t in grads_out])
        return outs, g

    with use_backend(qkv_projection="cuda"):
        outs, grads = run(qkv_projection, (x, w, b))
    assert all(o.shape == (B, H, T, C // H) and o.is_contiguous() for o in outs)
    oracle_args = tuple(None if t is None else t.detach().float().requires_grad_() for t in (x, w, b))
    o_outs, o_grads = run(reference.qkv_projection, oracle_args)
    p_outs, p_grads = run(reference.qkv_projection, tuple(None if t is None else t.detach().requires_grad_() for t in (x, w, b)))
    for name, o, p, r in zip("qkv", outs, p_outs, o_outs):
        assert_2x_rule(name, o, p, r, dtype)
    for name, o, p, r in zip(["dx", "dweight", "dbias"][: len(leaves)], grads, p_grads, o_grads):
        assert_2x_rule(name, o, p, r, dtype)


def test_outputs_are_slices_of_one_buffer():
    (x, w, b), _ = _inputs(2, 5, 192, torch.float32, True, True, DEVICE)
    with use_backend(qkv_projection="cuda"):
        q, k, v = qkv_projection(x, w, b, 3)
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(2, 8), torch.randn(24, 8), None, 2), "x must be \\(B, T, C\\)"),
    (lambda: (torch.randn(1, 2, 8), torch.randn(24, 8), None, 3), "n_head \\(3\\) must divide C"),
    (lambda: (torch.randn(1, 2, 8), torch.randn(24, 8), None, 0), "n_head must be positive"),
    (lambda: (torch.randn(1, 2, 8), torch.randn(24, 7), None, 2), "weight must be \\(3C, C\\)"),
    (lambda: (torch.randn(1, 2, 8), torch.randn(24, 8).double(), None, 2), "weight dtype"),
    (lambda: (torch.randn(1, 2, 8), torch.randn(24, 8), torch.randn(23), 2), "bias must be \\(3C,\\)"),
    (lambda: (torch.randn(1, 2, 8), torch.randn(24, 8), torch.randn(24).half(), 2), "bias dtype"),
    (lambda: (torch.randint(0, 3, (1, 2, 8)), torch.randn(24, 8), None, 2), "x must be float"),
])
def test_extension_checks_name_the_argument(args, match):
    """The C++ TORCH_CHECKs, reached by calling the registered op directly."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastgpt.qkv_projection(*args())


def _cuobjdump():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def _expect_cuda_build():
    if os.environ.get("FASTGPT_SKIP_CUDA_BUILD") == "1" or torch.version.cuda is None:
        return False
    return bool(shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc") or os.environ.get("CUDA_HOME"))


def test_cuda_part_was_built_with_sm80_and_sm90a_device_code():
    """Where nvcc and a CUDA torch exist (this machine, CI), the CUDA sources must have compiled
    into the extension, for sm_80 and sm_90a unless TORCH_CUDA_ARCH_LIST chose otherwise (the
    kernels themselves: test_gemm_sass.py)."""
    if not _expect_cuda_build():
        pytest.skip("no CUDA toolkit or CUDA torch: the CPU-only build is expected")
    assert _C.cuda_built(), "fastgpt._C was built without its CUDA part although nvcc is present"
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found")
    listing = subprocess.run([tool, "--list-elf", _C.__file__], capture_output=True, text=True, check=True).stdout
    archs = set(re.findall(r"sm_(\d+a?)", listing))
    wanted = {"80", "90a"} if not (HAS_CUDA or os.environ.get("TORCH_CUDA_ARCH_LIST")) else set()
    assert archs and wanted <= archs, f"device code for sm_{sorted(wanted)} expected, found {listing!r}"


@pytest.mark.parametrize("B,T,C,H,reason", [
    (2, 8, 96, 8, "head dim C / n_head = 12 must be a multiple of 8"),
    (2, 8, 100, 4, "multiple of 8"),
    (2, 8, 128, 2, ""),
])
def test_kernel_contract_names_what_is_wrong(B, T, C, H, reason):
    """The launcher's shape contract (checked on the host; on a GPU a forced `cuda` backend
    raises it, `auto` keeps cuBLAS)."""
    if not hasattr(_C, "_qkv_shape_unsupported"):
        pytest.skip("fastgpt._C was built without its CUDA part")
    got = _C._qkv_shape_unsupported(B, T, C, H, T * C, C, "bfloat16", 0)
    assert (reason in got and got) if reason else got == "", got
    assert "16-byte aligned" in _C._qkv_shape_unsupported(B, T, 128, 2, T * 132, 132, "bfloat16", 0)
    assert "16-byte aligned" in _C._qkv_shape_unsupported(B, T, 128, 2, T * 128, 128, "bfloat16", 8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,T,C,H", SHAPES + [(8, 1024, 768, 12), (2, 200, 128, 1), (3, 130, 1024, 8), (2, 64, 1600, 25)])
def test_cuda_kernel_bf16_and_gpt2_shapes(B, T, C, H, dtype):
    """The CUTLASS forward (head-split epilogue) and the in-place backward GEMMs on the GPU
    (cuBLAS for fp32): T off the tile, B*T below a tile, one head, head dims 64 and 128, H odd."""
    (x, w, b), _ = _inputs(B, T, C, dtype, True, T != 97, "cuda")
    grads_out = [torch.randn(B, H, T, C // H, device="cuda", dtype=dtype) for _ in range(3)]
    with use_backend(qkv_projection="cuda"):
        outs = qkv_projection(x, w, b, H)
    grads = torch.autograd.grad(outs, (x, w, b), grads_out)
    leaves = [t.detach().float().requires_grad_() for t in (x, w, b)]
    o_outs = reference.qkv_projection(*leaves, H)
    o_grads = torch.autograd.grad(o_outs, leaves, [g.float() for g in grads_out])
    plain = [t.detach().requires_grad_() for t in (x, w, b)]
    p_outs = reference.qkv_projection(*plain, H)
    p_grads = torch.autograd.grad(p_outs, plain, grads_out)
    for name, o, p, r in zip(["q", "k", "v", "dx", "dweight", "dbias"], [*outs, *grads], [*p_outs, *p_grads], [*o_outs, *o_grads]):
        assert_2x_rule(name, o, p, r, dtype)


@pytest.mark.gpu
def test_cuda_refuses_unsupported_head_dim_with_a_reason():
    x = torch.randn(2, 4, 96, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(288, 96, device="cuda", dtype=torch.bfloat16)
    with use_backend(qkv_projection="cuda"):
        with pytest.raises(fastgpt.BackendError, match="multiple of 8"):
            qkv_projection(x, w, None, 8)
    assert fastgpt.backend_for("qkv_projection", x, w, None, 8) == "reference"
