"""fastgpt.kernels.layer_norm against the fp32 F.layer_norm oracle (outputs and all gradients)."""
import pytest
import torch
import torch.nn.functional as F

from fastgpt.kernels.layer_norm import MAX_N, layer_norm_bwd, layer_norm_fwd
from helpers import assert_2x_rule

EPS = 1e-5


def make_2d(rows, N, dtype, layout, device, scale=1.0, shift=0.0):
    """An (M, N) tensor, M = prod(rows), laid out as ``layout`` says.

    contiguous: plain.  rowpad: rows of a wider buffer (row stride N + 5, column stride 1).
    colstride2: x[:, ::2] of a (M, 2N) buffer (column stride 2: the launcher copies).
    transposed: an (N, M) buffer transposed (column stride M).
    """
    M = 1
    for r in rows:
        M *= r
    if layout == "contiguous":
        t = torch.randn(*rows, N, device=device).reshape(M, N)
    elif layout == "rowpad":
        t = torch.randn(M, N + 5, device=device)[:, :N]
    elif layout == "colstride2":
        t = torch.randn(M, 2 * N, device=device)[:, ::2]
    elif layout == "transposed":
        t = torch.randn(N, M, device=device).t()
    else:
        raise AssertionError(layout)
    return (t * scale + shift).to(dtype)


def make_params(N, dtype, has_w, has_b, device, strided=False):
    """weight ~ 1 + N(0, 0.5), bias ~ N(0, 0.5); ``strided``: every other element of a buffer."""
    step = 2 if strided else 1
    w = (1 + 0.5 * torch.randn(step * N, device=device)).to(dtype)[::step] if has_w else None
    b = (0.5 * torch.randn(step * N, device=device)).to(dtype)[::step] if has_b else None
    return w, b


def torch_layer_norm(x, w, b, dy, dtype):
    """(y, dx, dw, db) of F.layer_norm with autograd, all inputs cast to ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (x, w, b)]
    xr, wr, br = leaves
    y = F.layer_norm(xr, (x.shape[-1],), wr, br, EPS)
    y.backward(dy.to(dtype))
    return y.detach(), xr.grad, wr.grad if wr is not None else None, br.grad if br is not None else None


def check_layer_norm(rows, N, dtype, has_w, has_b, layout, device):
    # A mean far from zero and a large spread: the variance must not be computed as E[x^2] - E[x]^2.
    x = make_2d(rows, N, dtype, layout, device, scale=3.0, shift=2.0)
    dy = make_2d(rows, N, dtype, layout, device)
    w, b = make_params(N, dtype, has_w, has_b, device, strided=layout != "contiguous")

    y, mean, rstd = layer_norm_fwd(x, w, b, EPS)
    assert y.dtype == dtype and mean.dtype == torch.float32 and rstd.dtype == torch.float32
    dx, dw, db = layer_norm_bwd(dy, x, w, b, mean, rstd)
    assert (dw is None) == (w is None) and (db is None) == (b is None)

    oracle = torch_layer_norm(x, w, b, dy, torch.float32)
    plain = torch_layer_norm(x, w, b, dy, dtype)
    xf = x.float()
    torch.testing.assert_close(mean, xf.mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd, torch.rsqrt(xf.var(-1, unbiased=False) + EPS), rtol=1e-4, atol=1e-5)
    for name, out, p, o in zip(("y", "dx", "dweight", "dbias"), (y, dx, dw, db), plain, oracle):
        if o is None:
            continue
        assert out.dtype == dtype, f"{name} has dtype {out.dtype}, expected {dtype}"
        assert_2x_rule(name, out, p, o, dtype=dtype)


# Not a full cross product: the interpreter is slow. Every row count, width, dtype, affine
# combination and layout appears at least once.
CASES = [
    # rows,    N,    dtype,         weight, bias,  layout
    ((1,),     1023, torch.float32, True,  True,  "contiguous"),
    ((97,),    1023, torch.float16, True,  True,  "contiguous"),
    ((3, 17),  768,  torch.float32, True,  False, "rowpad"),
    ((3, 17),  768,  torch.float16, False, False, "colstride2"),
    ((97,),    768,  torch.float32, False, True,  "transposed"),
    ((1,),     3072, torch.float16, True,  False, "contiguous"),
    ((3, 17),  3072, torch.float32, True,  True,  "rowpad"),
    ((97,),    3072, torch.float16, True,  True,  "transposed"),
    ((1,),     768,  torch.float16, False, True,  "rowpad"),
]


def case_id(case):
    rows, N, dtype, has_w, has_b, layout = case
    affine = ("w" if has_w else "") + ("b" if has_b else "") or "noaffine"
    return f"{'x'.join(map(str, rows))}-N{N}-{str(dtype)[6:]}-{affine}-{layout}"


@pytest.mark.parametrize("rows,N,dtype,has_w,has_b,layout", CASES, ids=[case_id(c) for c in CASES])
def test_layer_norm_matches_oracle(rows, N, dtype, has_w, has_b, layout, device):
    check_layer_norm(rows, N, dtype, has_w, has_b, layout, device)


def test_layer_norm_single_column(device):
    # N = 1: every row normalizes to exactly 0, so y = bias, dx = dweight = 0, dbias = sum(dy).
    # (The fp32 oracle is no reference here: it rounds x - mean to a few ulps, times 1/sqrt(eps).)
    x = make_2d((97,), 1, torch.float32, "contiguous", device)
    dy = make_2d((97,), 1, torch.float32, "contiguous", device)
    w, b = make_params(1, torch.float32, True, True, device)
    y, mean, rstd = layer_norm_fwd(x, w, b, EPS)
    dx, dw, db = layer_norm_bwd(dy, x, w, b, mean, rstd)
    torch.testing.assert_close(y, b.expand(97, 1), rtol=0, atol=0)
    torch.testing.assert_close(dx, torch.zeros_like(dx), rtol=0, atol=0)
    torch.testing.assert_close(dw, torch.zeros_like(dw), rtol=0, atol=0)
    torch.testing.assert_close(db, dy.sum(0), rtol=1e-6, atol=1e-6)


def test_layer_norm_widest_row(device):
    check_layer_norm((1,), MAX_N, torch.float32, True, True, "contiguous", device)


def test_layer_norm_empty(device):
    x = torch.empty(0, 768, device=device)
    w, b = make_params(768, torch.float32, True, True, device)
    y, mean, rstd = layer_norm_fwd(x, w, b, EPS)
    assert y.shape == (0, 768) and mean.shape == (0,) and rstd.shape == (0,)
    dx, dw, db = layer_norm_bwd(torch.empty_like(x), x, w, b, mean, rstd)
    assert dx.shape == (0, 768)
    assert torch.equal(dw, torch.zeros(768, device=device)) and torch.equal(db, torch.zeros(768, device=device))  # not left unset


def test_layer_norm_backward_is_deterministic(device):
    x = make_2d((97,), 1023, torch.float32, "contiguous", device)
    dy = make_2d((97,), 1023, torch.float32, "contiguous", device)
    w, b = make_params(1023, torch.float32, True, True, device)
    _, mean, rstd = layer_norm_fwd(x, w, b, EPS)
    first = layer_norm_bwd(dy, x, w, b, mean, rstd)
    second = layer_norm_bwd(dy, x, w, b, mean, rstd)
    for name, a, b_ in zip(("dx", "dweight", "dbias"), first, second):
        assert torch.equal(a, b_), f"{name} differs between two identical backward calls"


@pytest.mark.gpu
@pytest.mark.parametrize("N", [768, 1023, 3072])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_gpu_gpt2_shapes(N, dtype):
    check_layer_norm((4, 1024), N, dtype, True, True, "contiguous", "cuda")
    check_layer_norm((3, 17), N, dtype, True, False, "colstride2", "cuda")


# --- bad input -----------------------------------------------------------------------------

def _inputs(device, M=4, N=8, dtype=torch.float32):
    x = torch.randn(M, N, device=device, dtype=dtype)
    w, b = make_params(N, dtype, True, True, device)
    return x, w, b


@pytest.mark.parametrize("case,match", [
    ("x_3d", "x must be 2-D"),
    ("x_1d", "x must be 2-D"),
    ("x_int", "x must be float32, float16 or bfloat16"),
    ("x_not_tensor", "x must be a torch.Tensor"),
    ("n_too_wide", "N must be in"),
    ("weight_shape", r"weight must have shape \(8,\)"),
    ("weight_dtype", "weight must have dtype torch.float32"),
    ("bias_shape", r"bias must have shape \(8,\)"),
    ("bias_dtype", "bias must have dtype torch.float32"),
    ("weight_device", "weight must be on"),
])
def test_layer_norm_fwd_rejects_bad_input(case, match, device):
    x, w, b = _inputs(device)
    if case == "x_3d":
        x = x.reshape(2, 2, 8)
    elif case == "x_1d":
        x = x[0]
    elif case == "x_int":
        x = x.to(torch.int32)
    elif case == "x_not_tensor":
        x = x.tolist()
    elif case == "n_too_wide":
        x = torch.randn(1, MAX_N + 1, device=device)
        w = b = None
    elif case == "weight_shape":
        w = w[:7]
    elif case == "weight_dtype":
        w = w.half()
    elif case == "bias_shape":
        b = torch.zeros(2, 4, device=device)
    elif case == "bias_dtype":
        b = b.double()
    elif case == "weight_device":
        w = torch.empty(8, device="meta")
    with pytest.raises(ValueError, match=match):
        layer_norm_fwd(x, w, b, EPS)


@pytest.mark.parametrize("case,match", [
    ("dy_shape", r"dy must have x's shape \(4, 8\)"),
    ("dy_dtype", "dy must have dtype torch.float32"),
    ("dy_device", "dy must be on"),
    ("mean_dtype", "mean must have dtype torch.float32"),
    ("rstd_shape", r"rstd must have shape \(4,\)"),
    ("weight_shape", r"weight must have shape \(8,\)"),
])
def test_layer_norm_bwd_rejects_bad_input(case, match, device):
    x, w, b = _inputs(device)
    dy = torch.randn_like(x)
    mean = torch.zeros(4, device=device)
    rstd = torch.ones(4, device=device)
    if case == "dy_shape":
        dy = dy[:3]
    elif case == "dy_dtype":
        dy = dy.half()
    elif case == "dy_device":
        dy = torch.empty(4, 8, device="meta")
    elif case == "mean_dtype":
        mean = mean.half()
    elif case == "rstd_shape":
        rstd = rstd[:3]
    elif case == "weight_shape":
        w = w[:7]
    with pytest.raises(ValueError, match=match):
        layer_norm_bwd(dy, x, w, b, mean, rstd)
