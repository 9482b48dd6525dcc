"""fastgpt.ops.mlp (c_proj(gelu(c_fc(x))), the op whose backward puts the dGELU into the epilogue of
c_proj's dx GEMM) against the fp32 oracle, output and every gradient: the extension's C++ twin
here (the CUTLASS kernels on a GPU), the Triton path, bad input, and the model that uses it."""
import pytest
import torch

import fastgpt
from fastgpt import reference, use_backend
from fastgpt.ops import mlp
from helpers import DEVICE, check_2x_rule, randn

_C = pytest.importorskip("fastgpt._C")

# (leading dims of x, C, N, C_out): one row, prime numbers of rows, 3-d input, sizes that are not
# powers of 2, N not a multiple of 8 (the C++ twin's job; the CUDA kernels refuse it), and a
# c_proj whose output differs from the input width.
SHAPES = [((1,), 16, 64, 16), ((17,), 48, 40, 48), ((3, 7), 32, 24, 32), ((97,), 24, 96, 24), ((2, 5), 40, 20, 8),
          ((257,), 31, 56, 17)]


def _inputs(lead, C, N, C_out, bias, layout, device):
    """x (scaled by 2, so that the pre-activation covers GELU's curved region and both tails),
    both layers' weights and biases, the upstream gradient; x strided along C for 'colstride2'."""
    x = (randn(*lead, 2 * C, scale=2.0, device=device)[..., ::2] if layout == "colstride2"
         else randn(*lead, C, scale=2.0, device=device))
    w_fc = randn(N, C, scale=C**-0.5, device=device)
    b_fc = randn(N, device=device) if bias else None
    w_proj = randn(C_out, N, scale=N**-0.5, device=device)
    b_proj = randn(C_out, device=device) if bias else None
    return (x, w_fc, b_fc, w_proj, b_proj), randn(*lead, C_out, device=device)


def _check(lead, C, N, C_out, dtype, bias, approximate, layout, backend, device):
    inputs, dy = _inputs(lead, C, N, C_out, bias, layout, device)

    def run(xs, kernel):
        if not kernel:
            return reference.mlp(*xs, approximate)
        with use_backend(mlp=backend):
            y = mlp(*xs, approximate)
        assert y.shape == (*lead, C_out)
        return y

    names = ("y", "dx", "dfc_weight", "dfc_bias", "dproj_weight", "dproj_bias") if bias else \
        ("y", "dx", "dfc_weight", "dproj_weight")
    check_2x_rule(run, inputs, dy, dtype, names)


@pytest.mark.parametrize("lead,C,N,C_out", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_cpp_twin_matches_oracle(lead, C, N, C_out, dtype, approximate):
    """The extension's CPU implementation: ATen GEMMs around gelu.cuh's GELU and its derivative,
    the formulas the CUDA epilogues use."""
    bias = N != 20  # one shape without biases
    _check(lead, C, N, C_out, dtype, bias, approximate, "colstride2" if C == 48 else "contiguous", "cuda", "cpu")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_triton_path_matches_oracle(approximate):
    """F.linear, the Triton bias+GELU kernel (under the interpreter here), F.linear."""
    _check((17,), 48, 40, 48, torch.float32, True, approximate, "contiguous", "triton", DEVICE)


def test_returns_what_the_backward_reads():
    (x, w_fc, b_fc, w_proj, b_proj), _ = _inputs((5,), 16, 24, 16, True, "contiguous", "cpu")
    y, pre, act = torch.ops.fastgpt.mlp(x, w_fc, b_fc, w_proj, b_proj, "tanh")
    torch.testing.assert_close(pre, torch.nn.functional.linear(x, w_fc, b_fc))
    torch.testing.assert_close(act, torch.nn.functional.gelu(pre, approximate="tanh"))
    torch.testing.assert_close(y, torch.nn.functional.linear(act, w_proj, b_proj))


def test_auto_is_reference_on_cpu():
    args, _ = _inputs((5,), 16, 24, 16, True, "contiguous", "cpu")
    assert fastgpt.backend_for("mlp", *args) == "reference"


def _mlp_args(C=8, N=16, C_out=8, **change):
    args = dict(x=torch.randn(2, C), fc_weight=torch.randn(N, C), fc_bias=None, proj_weight=torch.randn(C_out, N),
                proj_bias=None)
    args.update({k: v() for k, v in change.items()})
    return args


@pytest.mark.parametrize("change, exc, match", [
    (dict(fc_weight=lambda: torch.randn(16, 7)), ValueError, r"fc_weight must be \(N, 8\)"),
    (dict(proj_weight=lambda: torch.randn(8, 15)), ValueError, r"proj_weight must be \(C_out, 16\)"),
    (dict(fc_bias=lambda: torch.randn(3)), ValueError, r"fc_bias must have shape \(16,\)"),
    (dict(proj_bias=lambda: torch.randn(16)), ValueError, r"proj_bias must have shape \(8,\)"),
    (dict(x=lambda: torch.randn(2, 8).long()), TypeError, "x must be a floating-point"),
    (dict(proj_weight=lambda: torch.randn(8)), ValueError, "proj_weight must be 2-d"),
])
def test_bad_input(change, exc, match):
    with pytest.raises(exc, match=match):
        mlp(**_mlp_args(**change))
    with pytest.raises(ValueError, match="approximate"):
        mlp(**_mlp_args(), approximate="sigmoid")


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(2, 8), torch.randn(16, 8), None, torch.randn(8, 15), None, "none"), r"proj_weight must be \(C_out, 16\)"),
    (lambda: (torch.randn(2, 8), torch.randn(16, 8), None, torch.randn(8, 16).double(), None, "none"), "proj_weight must have x's dtype"),
    (lambda: (torch.randn(2, 8), torch.randn(16, 8), None, torch.randn(8, 16), torch.randn(9), "none"), r"proj_bias must be \(8,\)"),
    (lambda: (torch.randn(2, 8), torch.randn(16, 8), None, torch.randn(8, 16), None, "erf"), "approximate must be"),
])
def test_extension_checks_name_the_argument(args, match):
    """The C++ TORCH_CHECKs, reached by calling the registered op directly."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastgpt.mlp(*args())


def test_extension_backward_checks_grad():
    (x, w_fc, b_fc, w_proj, _), _ = _inputs((5,), 16, 24, 16, True, "contiguous", "cpu")
    _, pre, act = torch.ops.fastgpt.mlp(x, w_fc, b_fc, w_proj, None, "none")
    with pytest.raises(RuntimeError, match=r"grad must be \[5, 16\]"):
        torch.ops.fastgpt.mlp_backward(torch.randn(5, 24), x, w_fc, pre, act, w_proj, True, False, "none")


def test_model_uses_it_on_every_backend():
    """The model's MLP through mlp on the cuda backend (the C++ twin here) matches the reference
    backend, forward and every parameter's gradient."""
    cfg = fastgpt.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)
    model = fastgpt.GPT(cfg)
    idx = torch.randint(0, 11, (2, 8))
    _, ref_loss = model(idx, idx)
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    with use_backend(mlp="cuda"):
        _, loss = model(idx, idx)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert model.backends()["mlp"] == "reference"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("lead,C,N,C_out,bias", [((1,), 16, 64, 16, True), ((3, 97), 64, 256, 64, False),
                                                 ((257,), 768, 3072, 768, True), ((4, 1024), 1600, 6400, 1600, True)])
def test_cuda_kernel(lead, C, N, C_out, bias, dtype, approximate):
    """On the GPU: the CUTLASS forward, and the backward's dGELU GEMM (pre read and the dGELU and
    bias column sums applied in c_proj's dx epilogue) then cuBLAS, on shapes that are not
    multiples of the tile."""
    _check(lead, C, N, C_out, dtype, bias, approximate, "contiguous", "cuda", "cuda")


@pytest.mark.gpu
def test_cuda_refuses_unaligned_features_with_a_reason():
    args = _mlp_args(N=20)
    args = {k: None if v is None else v.to("cuda", torch.bfloat16) for k, v in args.items()}
    with use_backend(mlp="cuda"):
        with pytest.raises(fastgpt.BackendError, match="multiples of 8"):
            mlp(**args)
    assert fastgpt.backend_for("mlp", *args.values()) != "cuda"


@pytest.mark.gpu
def test_auto_runs_cuda_where_the_table_measured_it_faster(tmp_path, monkeypatch):
    """A table whose backend choices name cuda for this shape (as scripts/tune.py --backends
    writes it for this build) moves auto onto the CUTLASS path there, and nowhere else."""
    import json

    from fastgpt.kernels import tuning
    from fastgpt.ops import _extension

    args = {k: None if v is None else v.to("cuda", torch.bfloat16) for k, v in _mlp_args(C=64, N=256, C_out=64).items()}
    name, cap = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    key = _extension.fc_key(args["x"], 256)
    table = {"schema": tuning.SCHEMA, "device": {"name": name, "capability": list(cap)}, "kernels": {},
             "backends": {"mlp": {"source": _C.sources_sha256(),
                                  "entries": {tuning.key_string(key): {"backend": "cuda"}}}}}
    (tmp_path / tuning.table_name(name, cap)).write_text(json.dumps(table))
    monkeypatch.setenv("FASTGPT_TUNED_DIR", str(tmp_path))
    tuning.clear_cache()
    try:
        assert fastgpt.backend_for("mlp", *args.values()) == "cuda"
        other = {**args, "x": torch.randn(300, 64, device="cuda", dtype=torch.bfloat16)}  # another rows bucket
        assert fastgpt.backend_for("mlp", *other.values()) == "triton"
    finally:
        tuning.clear_cache()
