"""fastgpt.kernels.bias_gelu against the fp32 F.gelu(x + bias) oracle (output and gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastgpt.kernels.bias_gelu import bias_gelu_bwd, bias_gelu_fwd
from helpers import assert_2x_rule


def make_2d(rows, N, dtype, layout, device, scale=1.0):
    """An (M, N) tensor, M = prod(rows): contiguous, rowpad (row stride N + 5), colstride2
    (x[:, ::2], column stride 2: the launcher copies) or transposed (column stride M)."""
    M = 1
    for r in rows:
        M *= r
    t = {
        "contiguous": lambda: torch.randn(*rows, N, device=device).reshape(M, N),
        "rowpad": lambda: torch.randn(M, N + 5, device=device)[:, :N],
        "colstride2": lambda: torch.randn(M, 2 * N, device=device)[:, ::2],
        "transposed": lambda: torch.randn(N, M, device=device).t(),
    }[layout]()
    return (t * scale).to(dtype)


def torch_bias_gelu(x, b, dy, approximate, dtype):
    """(y, dx, dbias) of F.gelu(x + b) with autograd, all inputs cast to ``dtype``."""
    xr = x.detach().to(dtype).requires_grad_()
    br = b.detach().to(dtype).requires_grad_() if b is not None else None
    y = F.gelu(xr + br if br is not None else xr, approximate=approximate)
    y.backward(dy.to(dtype))
    return y.detach(), xr.grad, br.grad if br is not None else None


def check_bias_gelu(rows, N, dtype, has_bias, approximate, layout, device):
    # Spread of 3 covers GELU's curved region and both tails.
    x = make_2d(rows, N, dtype, layout, device, scale=3.0)
    dy = make_2d(rows, N, dtype, layout, device)
    # Outside the contiguous layout, bias is a strided view too (the launcher copies it).
    step = 1 if layout == "contiguous" else 2
    b = torch.randn(step * N, device=device).to(dtype)[::step] if has_bias else None

    y = bias_gelu_fwd(x, b, approximate)
    dx, db = bias_gelu_bwd(dy, x, b, approximate)
    assert (db is None) == (b is None)

    oracle = torch_bias_gelu(x, b, dy, approximate, torch.float32)
    plain = torch_bias_gelu(x, b, dy, approximate, dtype)
    for name, out, p, o in zip(("y", "dx", "dbias"), (y, dx, db), plain, oracle):
        if o is None:
            continue
        assert out.dtype == dtype, f"{name} has dtype {out.dtype}, expected {dtype}"
        assert_2x_rule(name, out, p, o, dtype=dtype)


# Not a full cross product: the interpreter is slow. Every row count, width, dtype, bias
# choice, approximation and layout appears at least once.
CASES = [
    # rows,    N,    dtype,         bias,  approximate, layout
    ((1,),     1023, torch.float32, True,  "none", "contiguous"),
    ((97,),    1023, torch.float16, True,  "tanh", "contiguous"),
    ((3, 17),  768,  torch.float32, False, "tanh", "rowpad"),
    ((3, 17),  768,  torch.float16, True,  "none", "colstride2"),
    ((97,),    768,  torch.float32, True,  "none", "transposed"),
    ((1,),     3072, torch.float16, False, "none", "contiguous"),
    ((3, 17),  3072, torch.float32, True,  "tanh", "rowpad"),
    ((97,),    3072, torch.float16, True,  "none", "transposed"),
    ((97,),    1,    torch.float32, True,  "none", "contiguous"),
]


def case_id(case):
    rows, N, dtype, has_bias, approximate, layout = case
    return (f"{'x'.join(map(str, rows))}-N{N}-{str(dtype)[6:]}-{'bias' if has_bias else 'nobias'}"
            f"-{approximate}-{layout}")


@pytest.mark.parametrize("rows,N,dtype,has_bias,approximate,layout", CASES, ids=[case_id(c) for c in CASES])
def test_bias_gelu_matches_oracle(rows, N, dtype, has_bias, approximate, layout, device):
    check_bias_gelu(rows, N, dtype, has_bias, approximate, layout, device)


def test_bias_gelu_default_is_exact_erf(device):
    x = torch.tensor([[-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5, 6.0]], device=device)
    torch.testing.assert_close(bias_gelu_fwd(x, None), F.gelu(x), rtol=1e-6, atol=1e-6)


def test_bias_gelu_saturates_without_overflow(device):
    # The tanh form goes through exp(2u): huge |x| must give x (or 0) and a gradient of 1 (or 0).
    x = torch.tensor([[-1e4, -60.0, 60.0, 1e4]], device=device)
    for approximate in ("none", "tanh"):
        y = bias_gelu_fwd(x, None, approximate)
        dx, _ = bias_gelu_bwd(torch.ones_like(x), x, None, approximate)
        torch.testing.assert_close(y, torch.tensor([[0.0, 0.0, 60.0, 1e4]], device=device))
        torch.testing.assert_close(dx, torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device))


def test_exact_gelu_accuracy_without_erf(device):
    """The erf-free Phi (see kernels/bias_gelu.py) against float64 over z in [-10, 10]: absolute
    error about fp32 rounding's, and no 1 + erf(z) cancellation in the negative tail, where
    0.5 * z * (1 + erf(z / sqrt(2))) in fp32 is off by 100% (GPU: MUFU.EX2/RCP add <= 2 ulp)."""
    z = torch.linspace(-10.0, 10.0, 64 * 4096, dtype=torch.float64)
    x = z.to(torch.float32).reshape(64, 4096)
    z64 = x.double().reshape(-1)
    phi = 0.5 * torch.special.erfc(-z64 / math.sqrt(2.0))
    y64 = z64 * phi
    g64 = phi + z64 * torch.exp(-0.5 * z64 * z64) / math.sqrt(2.0 * math.pi)
    y = bias_gelu_fwd(x.to(device), None).cpu().double().reshape(-1)
    g, _ = bias_gelu_bwd(torch.ones_like(x, device=device), x.to(device), None)
    g = g.cpu().double().reshape(-1)
    scale = z64.abs().clamp(min=1.0)
    assert ((y - y64).abs() / scale).max() < 4e-7
    assert (g - g64).abs().max() < 4e-7
    tail = z64 < -3
    assert ((y - y64).abs()[tail] / y64.abs()[tail]).max() < 2e-5


def test_bias_gelu_empty(device):
    x = torch.empty(0, 768, device=device)
    b = torch.randn(768, device=device)
    assert bias_gelu_fwd(x, b).shape == (0, 768)
    dx, db = bias_gelu_bwd(torch.empty_like(x), x, b)
    assert dx.shape == (0, 768) and torch.equal(db, torch.zeros_like(b))


def test_bias_gelu_backward_is_deterministic(device):
    x = make_2d((97,), 1023, torch.float32, "contiguous", device, scale=3.0)
    dy = make_2d((97,), 1023, torch.float32, "contiguous", device)
    b = torch.randn(1023, device=device)
    dx1, db1 = bias_gelu_bwd(dy, x, b)
    dx2, db2 = bias_gelu_bwd(dy, x, b)
    assert torch.equal(dx1, dx2), "dx differs between two identical backward calls"
    assert torch.equal(db1, db2), "dbias differs between two identical backward calls"


@pytest.mark.gpu
@pytest.mark.parametrize("N", [768, 3072, 1023])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bias_gelu_gpu_gpt2_shapes(N, approximate, dtype):
    check_bias_gelu((4, 1024), N, dtype, True, approximate, "contiguous", "cuda")
    check_bias_gelu((3, 17), N, dtype, True, approximate, "colstride2", "cuda")


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("x_3d", "x must be 2-D"),
    ("x_int", "x must be float32, float16 or bfloat16"),
    ("bias_shape", r"bias must have shape \(8,\)"),
    ("bias_dtype", "bias must have dtype torch.float32"),
    ("bias_device", "bias must be on"),
    ("approximate", "approximate must be 'none' or 'tanh'"),
])
def test_bias_gelu_fwd_rejects_bad_input(case, match, device):
    x = torch.randn(4, 8, device=device)
    b = torch.randn(8, device=device)
    approximate = "none"
    if case == "x_3d":
        x = x.reshape(2, 2, 8)
    elif case == "x_int":
        x = x.to(torch.int64)
    elif case == "bias_shape":
        b = b[:7]
    elif case == "bias_dtype":
        b = b.half()
    elif case == "bias_device":
        b = torch.empty(8, device="meta")
    elif case == "approximate":
        approximate = "sigmoid"
    with pytest.raises(ValueError, match=match):
        bias_gelu_fwd(x, b, approximate)


@pytest.mark.parametrize("case,match", [
    ("dy_shape", r"dy must have x's shape \(4, 8\)"),
    ("dy_dtype", "dy must have dtype torch.float32"),
    ("dy_ndim", "dy must be 2-D"),
    ("dy_device", "dy must be on"),
    ("approximate", "approximate must be 'none' or 'tanh'"),
])
def test_bias_gelu_bwd_rejects_bad_input(case, match, device):
    x = torch.randn(4, 8, device=device)
    b = torch.randn(8, device=device)
    dy = torch.randn_like(x)
    approximate = "none"
    if case == "dy_shape":
        dy = dy[:, :4]
    elif case == "dy_dtype":
        dy = dy.half()
    elif case == "dy_ndim":
        dy = dy.reshape(32)
    elif case == "dy_device":
        dy = torch.empty(4, 8, device="meta")
    elif case == "approximate":
        approximate = None
    with pytest.raises(ValueError, match=match):
        bias_gelu_bwd(dy, x, b, approximate)
