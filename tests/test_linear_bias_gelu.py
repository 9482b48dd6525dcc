"""fastgpt.ops.linear_bias_gelu against the fp32 oracle (output and every gradient): the
extension's C++ twin here (the CUTLASS kernel on a GPU), the Triton path and bad input. (The
model's MLP calls fastgpt.ops.mlp, which runs this op's GEMM on cuda: tests/test_mlp.py.)"""
import pytest
import torch

import fastgpt
from fastgpt import reference, use_backend
from fastgpt.ops import linear_bias_gelu
from helpers import DEVICE, check_2x_rule, randn

_C = pytest.importorskip("fastgpt._C")

# (leading dims of x, K, N): one row, a prime number of rows, 3-d input, K and N not powers of 2,
# N not a multiple of 8 (the C++ twin's job; the CUDA kernel refuses it and says why).
SHAPES = [((1,), 16, 64), ((17,), 48, 40), ((3, 7), 32, 24), ((97,), 24, 96), ((2, 5), 40, 20)]


def _inputs(lead, K, N, bias, layout, device):
    """x (scaled by 2: the pre-activation spreads over GELU's curved region and both tails),
    weight, bias and the upstream gradient; x strided along K for layout 'colstride2'."""
    x = randn(*lead, 2 * K, scale=2.0, device=device)[..., ::2] if layout == "colstride2" else randn(*lead, K, scale=2.0, device=device)
    w = randn(N, K, scale=K**-0.5, device=device)
    b = randn(N, device=device) if bias else None
    return (x, w, b), randn(*lead, N, device=device)


def _check(lead, K, N, dtype, bias, approximate, layout, backend, device):
    inputs, dy = _inputs(lead, K, N, bias, layout, device)

    def run(xs, kernel):
        if not kernel:
            return reference.linear_bias_gelu(*xs, approximate)
        with use_backend(linear_bias_gelu=backend):
            y = linear_bias_gelu(*xs, approximate)
        assert y.shape == (*lead, N)
        return y

    check_2x_rule(run, inputs, dy, dtype, ("y", "dx", "dweight", "dbias"))


@pytest.mark.parametrize("lead,K,N", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_cpp_twin_matches_oracle(lead, K, N, dtype, approximate):
    """The extension's CPU implementation: ATen GEMMs around gelu.cuh's GELU and its
    derivative, the formulas the CUDA epilogue and dgelu kernel use."""
    bias = N != 20  # one shape without a bias
    _check(lead, K, N, dtype, bias, approximate, "colstride2" if K == 48 else "contiguous", "cuda", "cpu")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_triton_path_matches_oracle(approximate):
    """F.linear then the Triton bias+GELU kernel (under the interpreter here)."""
    _check((17,), 48, 40, torch.float32, True, approximate, "contiguous", "triton", DEVICE)


def test_returns_pre_activation_for_the_backward():
    (x, w, b), _ = _inputs((5,), 16, 24, True, "contiguous", "cpu")
    y, pre = torch.ops.fastgpt.linear_bias_gelu(x, w, b, "none")
    torch.testing.assert_close(pre, torch.nn.functional.linear(x, w, b))
    torch.testing.assert_close(y, torch.nn.functional.gelu(pre))


def test_auto_is_reference_on_cpu():
    (x, w, b), _ = _inputs((5,), 16, 24, True, "contiguous", "cpu")
    assert fastgpt.backend_for("linear_bias_gelu", x, w, b) == "reference"


@pytest.mark.parametrize("call, exc, match", [
    (lambda: linear_bias_gelu(torch.randn(2, 8), torch.randn(4, 7), None), ValueError, r"weight must be \(N, 8\)"),
    (lambda: linear_bias_gelu(torch.randn(2, 8), torch.randn(4, 8), torch.randn(3)), ValueError, r"bias must have shape \(4,\)"),
    (lambda: linear_bias_gelu(torch.randn(2, 8), torch.randn(4, 8), None, "sigmoid"), ValueError, "approximate"),
    (lambda: linear_bias_gelu(torch.randn(2, 8).long(), torch.randn(4, 8), None), TypeError, "x must be a floating-point"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(2, 8), torch.randn(4, 7), None, "none"), r"weight must be \(N, 8\)"),
    (lambda: (torch.randn(2, 8), torch.randn(4, 8).double(), None, "none"), "weight dtype"),
    (lambda: (torch.randn(2, 8), torch.randn(4, 8), torch.randn(5), "none"), r"bias must be \(4,\)"),
    (lambda: (torch.randn(2, 8), torch.randn(4, 8), None, "erf"), "approximate must be"),
])
def test_extension_checks_name_the_argument(args, match):
    """The C++ TORCH_CHECKs, reached by calling the registered op directly."""
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastgpt.linear_bias_gelu(*args())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("lead,K,N,bias", [((1,), 16, 64, True), ((3, 97), 64, 256, False), ((257,), 768, 3072, True),
                                           ((4, 1024), 1600, 6400, True)])
def test_cuda_kernel(lead, K, N, bias, dtype, approximate):
    """The CUTLASS forward (bias, GELU and pre-activation in its epilogue) and the dgelu +
    cuBLAS backward on the GPU, including shapes that are not multiples of the tile."""
    _check(lead, K, N, dtype, bias, approximate, "contiguous", "cuda", "cuda")


@pytest.mark.gpu
def test_cuda_refuses_unaligned_features_with_a_reason():
    x = torch.randn(4, 16, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(20, 16, device="cuda", dtype=torch.bfloat16)
    with use_backend(linear_bias_gelu="cuda"):
        with pytest.raises(fastgpt.BackendError, match="multiples of 8"):
            linear_bias_gelu(x, w, None)
    assert fastgpt.backend_for("linear_bias_gelu", x, w, None) != "cuda"

