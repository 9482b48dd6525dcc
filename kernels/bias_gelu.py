"""Fused bias + GELU forward and backward (Triton) and their host launchers.

``bias_gelu_fwd(x, bias, approximate="none") -> y`` computes ``y = gelu(x + bias)`` on a 2-D
(M, N) ``x`` (the MLP's ``c_fc`` output) with ``bias`` (N,) or None;
``bias_gelu_bwd(dy, x, bias, approximate="none") -> (dx, dbias)`` its gradients. GELU is
nanoGPT's ``nn.GELU()`` (exact erf) by default, the tanh approximation with
``approximate="tanh"``, matching ``F.gelu``'s argument.

dbias is reduced without atomics: each backward program owns a block of rows (for one block
of columns) and writes one fp32 partial row into a (G, N) buffer, and
``fastgpt.kernels._reduce.column_sum`` sums its columns in a fixed order: bit-identical from run to
run on a given device.
"""
import functools

import torch
import triton
import triton.language as tl

from fastgpt.kernels import tuning
from fastgpt.kernels._launch import num_sms, on_device
from fastgpt.kernels._reduce import column_sum
from fastgpt.kernels.limits import DTYPES as _DTYPES

_APPROXIMATIONS = ("none", "tanh")

# Elements per program tile (BLOCK_M * BLOCK_N) and warps. Forward: 16 elements per thread, two
# 16-byte vector loads in bf16. Backward: half that, since it holds x, dy and an fp32 dbias
# accumulator per element; a 4096 tile needs ~144 registers (exact erf), one block per SM.
_FWD_TILE_ELEMENTS = 4096
_BWD_TILE_ELEMENTS = 2048
_NUM_WARPS = 8
# Fewest rows per backward program: below this the (G, N) partials cost more than they save.
_MIN_ROWS_PER_PROG = 32
# Backward programs per SM (8 warps each): enough loads in flight to cover memory latency.
_PROGRAMS_PER_SM = 4


def launch_config(N: int) -> dict:
    """Tile shape and warps of the forward and backward kernels for rows of width ``N``.

    BLOCK_N:     the power of two in 128..1024 that pads N least (the larger on a tie), so
                 N = 768 and 3072 tile without masked lanes.
    BLOCK_M:     forward rows per tile, 4096 / BLOCK_N.
    BWD_BLOCK_M: backward rows per loop step, 2048 / BLOCK_N.
    """
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    cap = max(128, min(1024, triton.next_power_of_2(N)))
    candidates = [b for b in (1024, 512, 256, 128) if b <= cap]
    block_n = min(candidates, key=lambda b: (triton.cdiv(N, b) * b - N, -b))
    return {
        "BLOCK_M": _FWD_TILE_ELEMENTS // block_n,
        "BWD_BLOCK_M": _BWD_TILE_ELEMENTS // block_n,
        "BLOCK_N": block_n,
        "num_warps": _NUM_WARPS,
    }


# Tuning interface (scripts/tune.py, fastgpt.kernels.tuning): the kernels a sweep times, their
# candidate configs (launch_config's first), the table key and a launch with a given config.
TUNABLE = ("fwd", "bwd")


@functools.lru_cache(maxsize=None)
def config_candidates(kind: str, N: int) -> tuple:
    """Candidate configs of the forward ("fwd": BLOCK_M, BLOCK_N, num_warps) or the backward
    ("bwd": the same, BLOCK_M being rows per loop step, and programs_per_sm) for width ``N``,
    ``launch_config``'s choice first.

    BLOCK_N is launch_config's or half of it (>= 128); tiles keep 8 to 16 values per thread in
    the forward (32 spill at 8 warps, tests/test_aot_norms.py) and 4 to 16 in the backward,
    which also holds dy and an fp32 accumulator.
    """
    base = launch_config(N)
    widths = [b for b in (base["BLOCK_N"], base["BLOCK_N"] // 2) if b >= 128]
    if kind == "fwd":
        first = {"BLOCK_M": base["BLOCK_M"], "BLOCK_N": base["BLOCK_N"], "num_warps": base["num_warps"]}
        others = [{"BLOCK_M": tile // bn, "BLOCK_N": bn, "num_warps": w} for bn in widths
                  for tile in (2048, 4096) for w in (4, 8) if 8 <= tile // (32 * w) <= 16]
    elif kind == "bwd":
        first = {"BLOCK_M": base["BWD_BLOCK_M"], "BLOCK_N": base["BLOCK_N"], "num_warps": base["num_warps"],
                 "programs_per_sm": _PROGRAMS_PER_SM}
        others = [{"BLOCK_M": tile // bn, "BLOCK_N": bn, "num_warps": w, "programs_per_sm": p} for bn in widths
                  for tile in (1024, 2048, 4096) for w in (4, 8) for p in (2, 4, 8) if 4 <= tile // (32 * w) <= 16]
    else:
        raise ValueError(f"kind must be one of {TUNABLE}, got {kind!r}")
    return (first, *[c for c in others if c != first])


def config_fields(cfg: dict) -> dict:
    return dict(cfg)


def tuning_key(M: int, N: int, dtype, approximate: str) -> dict:
    """The tuning-table key of a call: the exact width, rows per power of two, dtype, GELU form."""
    return {"N": N, "M": tuning.bucket(M), "dtype": dtype, "approximate": approximate}


def _pick(kind, x, approximate):
    M, N = x.shape
    if not x.is_cuda:
        return config_candidates(kind, N)[0]
    index = torch.cuda.current_device() if x.device.index is None else x.device.index
    return _tuned(kind, tuning.bucket(M), N, x.dtype, approximate, index)


@tuning.cached
def _tuned(kind, M, N, dtype, approximate, index):
    return tuning.pick(f"bias_gelu.{kind}", torch.device("cuda", index), tuning_key(M, N, dtype, approximate),
                       config_candidates(kind, N))


def launch_with_config(kind, cfg, **args):
    """``bias_gelu_fwd(**args)`` or ``bias_gelu_bwd(**args)`` with config ``cfg``."""
    if kind == "fwd":
        return bias_gelu_fwd(**args, config=cfg)
    if kind == "bwd":
        return bias_gelu_bwd(**args, config=cfg)
    raise ValueError(f"kind must be one of {TUNABLE}, got {kind!r}")


# GELU, with z = x + bias:
#   exact: gelu(z) = z * Phi(z),  Phi(z) = erfc(-z / sqrt(2)) / 2,
#          gelu'(z) = Phi(z) + z * phi(z),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi).
#   tanh:  gelu(z) = z * (1 + t) / 2,  t = tanh(u),  u = sqrt(2/pi) * (z + 0.044715 z^3),
#          gelu'(z) = (1 + t) / 2 + z * (1 - t^2) / 2 * sqrt(2/pi) * (1 + 3 * 0.044715 z^2).
# tanh(u) = 1 - 2 / (1 + exp(2u)) needs no tanh intrinsic, which not every Triton release
# exposes; u is clamped to +-15 (tanh(15) rounds to 1 in fp32) so exp never overflows.
#
# Phi without erf. With a = |z| / sqrt(2), erfc(a) = u * Q(s) * exp(-a^2) where
# u = 1 / (1 + p a), s = 1 - u = p a u: the form of Abramowitz & Stegun 7.1.26, refitted (p and a
# degree-7 polynomial minimising erfc's relative error over a in [0, 10]: 8.8e-8 in exact
# arithmetic) and written in s, which keeps Horner well conditioned near z = 0. Then
# Phi = 1 - erfc(a) / 2 for z >= 0 and erfc(a) / 2 for z < 0, with no 1 + erf(z) cancellation
# in the negative tail, and exp(-a^2) = exp(-z^2 / 2) is also phi's: the backward gets phi for
# one multiply. About 20 SASS instructions per element for gelu (libdevice's erff path: ~41)
# and 22 for gelu' (~50). Measured against float64 over 8M fp32 z in [-10, 10] (fp32 rounding
# after every operation, exact exp2 and reciprocal; the GPU's MUFU.EX2/RCP add at most 2 ulp):
# |gelu error| <= 3.9e-7 (1 ulp for z >= 3; relative error 6e-6 for z < -3, where the old
# form lost every digit), |gelu' error| <= 1.8e-7; see tests/test_kernel_bias_gelu.py.
@triton.jit
def _tanh(u):
    u = tl.minimum(tl.maximum(u, -15.0), 15.0)
    return 1.0 - 2.0 / (1.0 + tl.exp(2.0 * u))


@triton.jit
def _phi_and_gauss(z):
    """(Phi(z), exp(-z^2 / 2)) in fp32 (see the comment block above)."""
    pa = tl.abs(z) * (0.3305 * 0.7071067811865476)  # p * a
    u = 1.0 / (1.0 + pa)  # MUFU.RCP (div.full.f32: Triton's fp32 division is not IEEE)
    s = pa * u
    q = 0.06711560267546476 * s - 0.2431970188124543
    q = q * s + 0.22021465233124582
    q = q * s + 0.39801620286280803
    q = q * s - 1.3048590738321701
    q = q * s + 1.6630965853378996
    q = q * s - 1.2070712198253313
    q = q * s + 0.49999995612222603  # Q / 2: h = erfc(a) / 2
    gauss = tl.exp2(z * z * (-0.5 * 1.4426950408889634))
    h = u * q * gauss
    return tl.where(z >= 0, 1.0 - h, h), gauss


@triton.jit
def _gelu(z, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        y = 0.5 * z * (1.0 + t)
    else:
        phi, _ = _phi_and_gauss(z)
        y = z * phi
    return y


@triton.jit
def _gelu_grad(z, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        g = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
    else:
        phi, gauss = _phi_and_gauss(z)
        g = phi + z * (0.3989422804014327 * gauss)
    return g


@triton.jit
def _bias_gelu_fwd_kernel(
    X_ptr, B_ptr, Y_ptr,
    stride_x_row, stride_y_row,
    M, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, APPROX_TANH: tl.constexpr,
):
    """y = gelu(x + bias) on one BLOCK_M x BLOCK_N tile.

    Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)); program (i, j) computes rows
    [i*BLOCK_M, (i+1)*BLOCK_M) x columns [j*BLOCK_N, (j+1)*BLOCK_N) (edges masked).
    Tiles: BLOCK_M x BLOCK_N (powers of two).
    Pointers: X (M, N) x.dtype, row stride stride_x_row, unit column stride; B (N,) x.dtype
              (unused unless HAS_BIAS); Y (M, N) x.dtype, row stride stride_y_row.
    On-chip: the tile and its BLOCK_N bias values in registers.
    HBM bytes per element: 2 * sizeof(x.dtype) (read x once, write y once).
    Accumulation: none; the math runs in fp32 and y is cast to Y's element type.
    Constraints: unit column stride (the launcher copies x otherwise).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_N)
    rows64 = rows.to(tl.int64)
    z = tl.load(X_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
    z = z.to(tl.float32)
    if HAS_BIAS:
        z += tl.load(B_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    y = _gelu(z, APPROX_TANH)
    tl.store(Y_ptr + rows64[:, None] * stride_y_row + cols[None, :],
             y.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    DY_ptr, X_ptr, B_ptr, DX_ptr, DB_part_ptr,
    stride_dy_row, stride_x_row, stride_dx_row,
    M, N, ROWS_PER_PROG,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, APPROX_TANH: tl.constexpr,
):
    """dx = dy * gelu'(x + bias) for a block of rows, plus that block's dbias partial.

    Grid: (G, cdiv(N, BLOCK_N)), G = cdiv(M, ROWS_PER_PROG); program (i, j) loops over rows
    [i*ROWS_PER_PROG, min((i+1)*ROWS_PER_PROG, M)) in steps of BLOCK_M, columns
    [j*BLOCK_N, (j+1)*BLOCK_N).
    Tiles: BLOCK_M x BLOCK_N; ROWS_PER_PROG is a multiple of BLOCK_M.
    Pointers: DY, X (M, N) x.dtype with row strides stride_dy_row / stride_x_row and unit
              column stride; B (N,) x.dtype (unused unless HAS_BIAS); DX (M, N) x.dtype, row
              stride stride_dx_row; DB_part (G, N) fp32 contiguous (unused unless HAS_BIAS).
    On-chip: the bias slice and a BLOCK_M x BLOCK_N fp32 dbias accumulator stay in registers
    for the whole loop.
    HBM bytes per element: 3 * sizeof(x.dtype) (read x, dy; write dx) + 4 * G / M (partials).
    Accumulation: fp32.
    Constraints: ROWS_PER_PROG % BLOCK_M == 0 (host), unit column stride.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_BIAS:
        b = tl.load(B_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row_start = pid_m * ROWS_PER_PROG
    row_end = tl.minimum(row_start + ROWS_PER_PROG, M)
    for r0 in range(row_start, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)
        z = tl.load(X_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
        z = z.to(tl.float32)
        dy = tl.load(DY_ptr + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0)
        if HAS_BIAS:
            z += b[None, :]
        dx = dy.to(tl.float32) * _gelu_grad(z, APPROX_TANH)  # 0 where masked: dy = 0 there
        tl.store(DX_ptr + rows64[:, None] * stride_dx_row + cols[None, :],
                 dx.to(DX_ptr.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            acc += dx
    if HAS_BIAS:
        tl.store(DB_part_ptr + pid_m * N + cols, tl.sum(acc, axis=0), mask=col_mask)


def _check_2d(name, t, dtype, device):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (M, N), got shape {tuple(t.shape)}")
    if dtype is None:
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    elif t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype} (x's), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (x's device), got {t.device}")


def _check_inputs(x, bias, approximate):
    _check_2d("x", x, None, None)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (x.shape[1],):
            raise ValueError(f"bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise ValueError(f"bias must have dtype {x.dtype} (x's), got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"bias must be on {x.device} (x's device), got {bias.device}")
    if approximate not in _APPROXIMATIONS:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def _unit_col_stride(t):
    # The kernels index columns with stride 1; any row stride is fine.
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous()


def bias_gelu_fwd(x: torch.Tensor, bias, approximate: str = "none", config=None) -> torch.Tensor:
    """``gelu(x + bias)`` in one pass over ``x``.

    x:           (M, N), float32/float16/bfloat16, any row stride; copied first if its column
                 stride is not 1.
    bias:        (N,) in x's dtype, or None; copied if not contiguous.
    approximate: "none" (exact erf GELU, nanoGPT's nn.GELU()) or "tanh".
    config:      a config from ``config_candidates("fwd", N)``; default: the tuned one for this
                 call (``fastgpt.kernels.tuning``), else ``launch_config``'s.
    Returns y (M, N) contiguous in x's dtype. Raises ValueError on a non-2-D x, an
    unsupported dtype, a bias of the wrong shape/dtype/device, or an unknown approximate.
    """
    _check_inputs(x, bias, approximate)
    M, N = x.shape
    x = _unit_col_stride(x)
    bias = bias.contiguous() if bias is not None else None
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    cfg = config or _pick("fwd", x, approximate)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
    with on_device(x):
        _bias_gelu_fwd_kernel[grid](
            x, bias if bias is not None else x, y,
            x.stride(0), y.stride(0),
            M, N,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            HAS_BIAS=bias is not None, APPROX_TANH=approximate == "tanh",
            num_warps=cfg["num_warps"], num_stages=1,
        )
    return y


def backward_grid(M: int, N: int, device: torch.device, config: dict = None):
    """``(G, rows_per_program)`` of the backward's row split (a multiple of the config's
    BLOCK_M; default config: ``config_candidates("bwd", N)[0]``).

    Depends only on M, N, the device's SM count and the config, so the dbias summation order
    is reproducible on a given device with a given tuning table.
    """
    cfg = config or config_candidates("bwd", N)[0]
    col_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    target = triton.cdiv(num_sms(device) * cfg["programs_per_sm"], col_blocks)
    target = max(1, min(target, triton.cdiv(M, _MIN_ROWS_PER_PROG)))
    step = cfg["BLOCK_M"]
    rows_per_prog = triton.cdiv(triton.cdiv(M, target), step) * step
    return triton.cdiv(M, rows_per_prog), rows_per_prog


def bias_gelu_bwd(dy: torch.Tensor, x: torch.Tensor, bias, approximate: str = "none", config=None):
    """Gradients of ``bias_gelu_fwd``: returns ``(dx, dbias)``.

    dy, x:       (M, N) in the same dtype and on the same device, any row strides (copied if a
                 column stride is not 1).
    bias:        (N,) in x's dtype, or None (then dbias is None).
    approximate: as in the forward.
    config:      a config from ``config_candidates("bwd", N)``; default: the tuned one for this
                 call, else ``launch_config``'s.
    Returns dx (M, N) contiguous in x's dtype and dbias (N,) in bias's dtype, the fp32 sum of
    dx over rows reduced without atomics in a fixed order (bit-identical from run to run on
    the same device). Raises ValueError on mismatched shapes, dtypes or devices.
    """
    _check_inputs(x, bias, approximate)
    _check_2d("dy", dy, x.dtype, x.device)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    M, N = x.shape
    x, dy = _unit_col_stride(x), _unit_col_stride(dy)
    bias = bias.contiguous() if bias is not None else None
    has_bias = bias is not None
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return dx, torch.zeros_like(bias) if has_bias else None

    cfg = config or _pick("bwd", x, approximate)
    G, rows_per_prog = backward_grid(M, N, x.device, cfg)
    db_part = torch.empty((G, N), dtype=torch.float32, device=x.device) if has_bias else dx
    dbias = torch.empty_like(bias) if has_bias else None
    with on_device(x):
        _bias_gelu_bwd_kernel[(G, triton.cdiv(N, cfg["BLOCK_N"]))](
            dy, x, bias if has_bias else x, dx, db_part,
            dy.stride(0), x.stride(0), dx.stride(0),
            M, N, rows_per_prog,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
            HAS_BIAS=has_bias, APPROX_TANH=approximate == "tanh",
            num_warps=cfg["num_warps"], num_stages=1,
        )
        if has_bias:
            column_sum(db_part, dbias)
    return dx, dbias
