"""Fused LayerNorm forward and backward (Triton) and their host launchers.

``layer_norm_fwd(x, weight, bias, eps) -> (y, mean, rstd)`` and
``layer_norm_bwd(dy, x, weight, bias, mean, rstd) -> (dx, dweight, dbias)`` on 2-D (M, N)
tensors, normalizing over the last dimension as ``F.layer_norm(x, (N,), weight, bias, eps)``.
``weight`` and ``bias`` may each be None (nanoGPT's ``bias=False``). Statistics are fp32.

The backward reduces dweight/dbias without atomics: each program of the dx kernel owns a
contiguous block of rows and writes one fp32 partial row of each into a (G, N) or (G, 2N)
buffer, then ``fastgpt.kernels._reduce.column_sum`` sums that buffer's columns in a fixed order
(one launch for both, at least one program per SM), so the result is bit-identical from run to
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
from fastgpt.kernels.limits import LAYER_NORM_MAX_N as MAX_N  # the forward keeps a row in registers

# Fewest rows per backward program: below this the (G, N) partials cost more than they save.
_MIN_ROWS_PER_PROG = 16


def launch_config(N: int) -> dict:
    """The launch configuration of the forward and dx kernels for rows of width ``N``.

    BLOCK_N:          next power of two >= N; the whole row is one tile.
    BLOCK_M:          rows per forward program: a few for narrow rows so each program moves
                      at least ~2K elements, one from N > 1024 on.
    BWD_BLOCK_M:      rows per step of a backward program: up to 4K elements in flight (4 rows
                      of N = 768), so their loads overlap and the two row reductions per step
                      (each a round of barriers) are shared by all of them.
    num_warps:        4 up to N = 1024, 8 up to 4096, 16 above (<= 16 fp32 values per thread
                      per row for the widths GPT-2 uses).
    programs_per_sm:  backward programs per SM: as many as are co-resident at the registers
                      the dx kernel needs (about 100 at 4 warps, 128 at 8 and 16 warps on
                      sm_90, see scripts/sass_report.py); more would just run in a second wave
                      and grow the partial-sum buffer.
    """
    if not 1 <= N <= MAX_N:
        raise ValueError(f"N must be in [1, {MAX_N}], got {N}")
    block_n = triton.next_power_of_2(N)
    num_warps = 4 if block_n <= 1024 else 8 if block_n <= 4096 else 16
    return {
        "BLOCK_N": block_n,
        "BLOCK_M": max(1, min(8, 2048 // block_n)),
        "BWD_BLOCK_M": max(1, min(8, 4096 // block_n)),
        "num_warps": num_warps,
        "programs_per_sm": {4: 4, 8: 2, 16: 1}[num_warps],
    }


# Tuning interface (scripts/tune.py, fastgpt.kernels.tuning): the kernels a sweep times, their
# candidate configs (launch_config's first), the table key and a launch with a given config.
TUNABLE = ("fwd", "bwd")


@functools.lru_cache(maxsize=None)
def config_candidates(kind: str, N: int) -> tuple:
    """Candidate configs of the forward ("fwd": BLOCK_M, num_warps) or the backward ("bwd":
    BLOCK_M rows per step, num_warps, programs_per_sm) for rows of width ``N``,
    ``launch_config``'s choice first.

    The others keep 8 or 16 fp32 values of each tile per thread (launch_config's forward has
    16, its backward up to 32): fewer leave the loads narrow, more would approach spilling; and
    tiles of at most 4096 elements (or one row), as a 2 x 4096 tile spills on sm_80
    (tests/test_aot_norms.py). The backward's programs per SM are launch_config's (already
    what is co-resident) or half of it (fewer partial rows to sum).
    """
    base = launch_config(N)
    block_n = base["BLOCK_N"]
    tiles = [(bm, w) for bm in (1, 2, 4, 8) for w in (2, 4, 8, 16)
             if bm * block_n <= max(4096, block_n) and bm * block_n // (32 * w) in (8, 16)]
    if kind == "fwd":
        first = {"BLOCK_M": base["BLOCK_M"], "num_warps": base["num_warps"]}
        others = [{"BLOCK_M": bm, "num_warps": w} for bm, w in tiles]
    elif kind == "bwd":
        first = {"BLOCK_M": base["BWD_BLOCK_M"], "num_warps": base["num_warps"], "programs_per_sm": base["programs_per_sm"]}
        per_sm = sorted({base["programs_per_sm"], max(1, base["programs_per_sm"] // 2)}, reverse=True)
        others = [{"BLOCK_M": bm, "num_warps": w, "programs_per_sm": p} for bm, w in [(first["BLOCK_M"], first["num_warps"]), *tiles]
                  for p in per_sm]
    else:
        raise ValueError(f"kind must be one of {TUNABLE}, got {kind!r}")
    return tuple({tuple(c.items()): c for c in (first, *others)}.values())


def config_fields(cfg: dict) -> dict:
    return dict(cfg)


def tuning_key(M: int, N: int, dtype) -> dict:
    """The tuning-table key of a call: the exact width, rows per power of two, the dtype."""
    return {"N": N, "M": tuning.bucket(M), "dtype": dtype}


def _pick(kind, x):
    M, N = x.shape
    if not x.is_cuda:
        return config_candidates(kind, N)[0]
    index = torch.cuda.current_device() if x.device.index is None else x.device.index
    return _tuned(kind, tuning.bucket(M), N, x.dtype, index)


@tuning.cached
def _tuned(kind, M, N, dtype, index):
    return tuning.pick(f"layer_norm.{kind}", torch.device("cuda", index), tuning_key(M, N, dtype), config_candidates(kind, N))


def launch_with_config(kind, cfg, **args):
    """``layer_norm_fwd(**args)`` or ``layer_norm_bwd(**args)`` with config ``cfg``."""
    if kind == "fwd":
        return layer_norm_fwd(**args, config=cfg)
    if kind == "bwd":
        return layer_norm_bwd(**args, config=cfg)
    raise ValueError(f"kind must be one of {TUNABLE}, got {kind!r}")


@triton.jit
def _layer_norm_fwd_kernel(
    X_ptr, Y_ptr, W_ptr, B_ptr, Mean_ptr, Rstd_ptr,
    stride_x_row, stride_y_row,
    M, N, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    """LayerNorm forward over BLOCK_M rows.

    Grid: (cdiv(M, BLOCK_M),); program i normalizes rows [i*BLOCK_M, (i+1)*BLOCK_M).
    Tiles: BLOCK_M x BLOCK_N, BLOCK_N = next_pow2(N) >= N (columns >= N are masked).
    Pointers: X (M, N) x.dtype, row stride stride_x_row, unit column stride;
              Y (M, N) x.dtype, row stride stride_y_row; W, B (N,) x.dtype (unused unless
              HAS_W / HAS_B); Mean, Rstd (M,) fp32.
    On-chip: the rows, their mean and rstd, W and B all stay in registers; x is read once.
    HBM bytes per element: 2 * sizeof(x.dtype) (read x, write y) + 8 / N (mean, rstd).
    Accumulation: fp32 (two-pass variance over the register-resident row).
    Constraints: BLOCK_N >= N, BLOCK_N <= MAX_N (host checks), unit column stride (the
    launcher copies x otherwise).
    """
    tl.static_assert(BLOCK_N <= 8192, "a row must fit in registers")
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_N)
    rows64 = rows.to(tl.int64)

    x = tl.load(X_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / N  # (BLOCK_M,)
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        w = tl.load(W_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_B:
        b = tl.load(B_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(Y_ptr + rows64[:, None] * stride_y_row + cols[None, :],
             y.to(Y_ptr.dtype.element_ty), mask=mask)
    tl.store(Mean_ptr + rows, mean, mask=row_mask)
    tl.store(Rstd_ptr + rows, rstd, mask=row_mask)


# LayerNorm VJP, per row of N columns:
#   mu = mean(x),  rstd = (var(x) + eps)^-1/2,  xhat = (x - mu) * rstd,  y = xhat * w + b.
# d xhat_i / d x_j = rstd * (delta_ij - 1/N) + (x_i - mu) * d rstd / d x_j
#                  = rstd * (delta_ij - 1/N - xhat_i * xhat_j / N),
# since d rstd / d x_j = -rstd^3 * (x_j - mu) / N. With g = dy * w (the gradient of xhat):
#   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
#   dw = sum over rows of dy * xhat,   db = sum over rows of dy.
@triton.jit
def _layer_norm_bwd_dx_kernel(
    DY_ptr, X_ptr, W_ptr, Mean_ptr, Rstd_ptr, DX_ptr, DW_part_ptr, DB_part_ptr,
    stride_dy_row, stride_x_row, stride_dx_row, stride_part_row,
    M, N, ROWS_PER_PROG,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_W: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
):
    """LayerNorm backward: dx for a block of rows, plus that block's dweight/dbias partials.

    Grid: (G,) with G = cdiv(M, ROWS_PER_PROG); program i walks rows
    [i*ROWS_PER_PROG, min((i+1)*ROWS_PER_PROG, M)) BLOCK_M rows per step.
    Tiles: BLOCK_M x BLOCK_N, BLOCK_N = next_pow2(N) >= N (columns >= N masked); the step's
    rows load together and share one round of barriers per row reduction.
    Pointers: DY, X (M, N) x.dtype with row strides stride_dy_row / stride_x_row and unit
              column stride; DX (M, N) x.dtype, row stride stride_dx_row; W (N,) x.dtype
              (unused unless HAS_W); Mean, Rstd (M,) fp32; DW_part, DB_part: rows of G fp32
              partials, row stride stride_part_row (unused unless HAS_DW / HAS_DB).
    On-chip: W and the fp32 dweight/dbias partial sums stay in registers for the whole loop;
    each row of x and dy is read once.
    HBM bytes per element: 3 * sizeof(x.dtype) (read x, dy; write dx) + 8 / N (mean, rstd)
    + 4 * G / M per partial buffer.
    Accumulation: fp32 (row reductions and the partial sums, in a fixed order).
    Constraints: BLOCK_N >= N, BLOCK_N <= MAX_N (host checks), ROWS_PER_PROG % BLOCK_M == 0,
    unit column stride.
    """
    tl.static_assert(BLOCK_N <= 8192, "a row and its partials must fit in registers")
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_W:
        w = tl.load(W_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * ROWS_PER_PROG
    row_end = tl.minimum(row_start + ROWS_PER_PROG, M)
    for r0 in range(row_start, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)  # M * stride may exceed 2**31
        x = tl.load(X_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
        dy = tl.load(DY_ptr + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        mean = tl.load(Mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(Rstd_ptr + rows, mask=row_mask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_W:
            g = dy * w[None, :]
        else:
            g = dy
        c1 = tl.sum(g * xhat, axis=1) / N
        c2 = tl.sum(g, axis=1) / N
        dx = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX_ptr + rows64[:, None] * stride_dx_row + cols[None, :],
                 dx.to(DX_ptr.dtype.element_ty), mask=mask)
        if HAS_DW:
            dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_DB:
            db_acc += tl.sum(dy, axis=0)
    if HAS_DW:
        tl.store(DW_part_ptr + pid * stride_part_row + cols, dw_acc, mask=col_mask)
    if HAS_DB:
        tl.store(DB_part_ptr + pid * stride_part_row + cols, db_acc, mask=col_mask)


def _check_2d(name, t, dtype=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (M, N), got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype} (x's), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (x's device), got {t.device}")


def _check_vec(name, t, length, dtype, device):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device} (x's device), got {t.device}")


def _check_x(x):
    _check_2d("x", x)
    if x.dtype not in _DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    N = x.shape[1]
    if not 1 <= N <= MAX_N:
        raise ValueError(f"x's last dimension N must be in [1, {MAX_N}], got {N}")


def _unit_col_stride(t):
    # The kernels index columns with stride 1; any row stride is fine.
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous()


def _contiguous(t):
    return None if t is None else t.contiguous()


def layer_norm_fwd(x: torch.Tensor, weight, bias, eps: float, config=None):
    """LayerNorm over the last dimension of a 2-D ``x`` (M, N).

    x:      (M, N), float32/float16/bfloat16, any row stride; if the column stride is not 1
            it is copied to a contiguous tensor first.
    weight: (N,) in x's dtype, or None (no scale); copied if not contiguous.
    bias:   (N,) in x's dtype, or None (no shift); copied if not contiguous.
    eps:    added to the variance.
    config: a forward config from ``config_candidates("fwd", N)``; default: the tuned one
            for this call (``fastgpt.kernels.tuning``), else ``launch_config``'s.
    Returns ``(y, mean, rstd)``: y (M, N) contiguous in x's dtype; mean and rstd (M,) fp32,
    rstd = 1 / sqrt(var + eps) with the biased variance, as the backward expects.
    Raises ValueError on a non-2-D x, an unsupported dtype, N outside [1, MAX_N], or a
    weight/bias of the wrong shape, dtype or device.
    """
    _check_x(x)
    M, N = x.shape
    _check_vec("weight", weight, N, x.dtype, x.device)
    _check_vec("bias", bias, N, x.dtype, x.device)
    x = _unit_col_stride(x)
    weight, bias = _contiguous(weight), _contiguous(bias)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd
    cfg = config or _pick("fwd", x)
    block_n = triton.next_power_of_2(N)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]),)
    with on_device(x):
        _layer_norm_fwd_kernel[grid](
            x, y,
            weight if weight is not None else x, bias if bias is not None else x,
            mean, rstd,
            x.stride(0), y.stride(0),
            M, N, float(eps),
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=block_n,
            HAS_W=weight is not None, HAS_B=bias is not None,
            num_warps=cfg["num_warps"], num_stages=1,
        )
    return y, mean, rstd


def backward_grid(M: int, N: int, device: torch.device, config: dict = None):
    """``(G, rows_per_program)`` for the backward: G programs, each owning a row block (a
    multiple of the config's BLOCK_M rows; default config: ``config_candidates("bwd", N)[0]``).

    G depends only on M, N, the device's SM count and the config, so the partial-sum order
    (and thus dweight/dbias) is reproducible on a given device with a given tuning table.
    """
    cfg = config or config_candidates("bwd", N)[0]
    target = min(num_sms(device) * cfg["programs_per_sm"], triton.cdiv(M, _MIN_ROWS_PER_PROG))
    step = cfg["BLOCK_M"]
    rows_per_prog = triton.cdiv(triton.cdiv(M, max(1, target)), step) * step
    return triton.cdiv(M, rows_per_prog), rows_per_prog


def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight, bias, mean: torch.Tensor,
                   rstd: torch.Tensor, config=None):
    """Gradients of ``layer_norm_fwd``: returns ``(dx, dweight, dbias)``.

    dy, x:      (M, N) in the same dtype and on the same device, any row strides (copied if
                a column stride is not 1).
    weight:     (N,) in x's dtype, or None; bias: (N,) in x's dtype, or None (only its
                presence matters: dbias is computed iff bias is not None).
    mean, rstd: (M,) fp32, as returned by ``layer_norm_fwd``.
    config:     a backward config from ``config_candidates("bwd", N)``; default: the tuned
                one for this call, else ``launch_config``'s.
    Returns dx (M, N) contiguous in x's dtype, dweight in weight's dtype (None if weight is
    None) and dbias in bias's dtype (None if bias is None). dweight/dbias are reduced without
    atomics in a fixed order: bit-identical from run to run on the same device.
    Raises ValueError on mismatched shapes, dtypes or devices (naming the argument).
    """
    _check_x(x)
    M, N = x.shape
    _check_2d("dy", dy, x.dtype, x.device)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    _check_vec("weight", weight, N, x.dtype, x.device)
    _check_vec("bias", bias, N, x.dtype, x.device)
    _check_vec("mean", mean, M, torch.float32, x.device)
    _check_vec("rstd", rstd, M, torch.float32, x.device)
    x, dy = _unit_col_stride(x), _unit_col_stride(dy)
    weight, bias = _contiguous(weight), _contiguous(bias)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    has_dw, has_db = weight is not None, bias is not None

    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:  # no rows: the parameters' gradients are sums of nothing
        return dx, torch.zeros_like(weight) if has_dw else None, torch.zeros_like(bias) if has_db else None
    dweight = torch.empty_like(weight) if has_dw else None
    dbias = torch.empty_like(bias) if has_db else None

    cfg = config or _pick("bwd", x)
    G, rows_per_prog = backward_grid(M, N, x.device, cfg)
    # dweight's partials in columns [0, N), dbias's after them: one column-sum launch for both.
    n_parts = int(has_dw) + int(has_db)
    part = torch.empty((G, n_parts * N), dtype=torch.float32, device=x.device) if n_parts else dx
    dw_part = part if has_dw else dx
    db_part = part[:, N * has_dw:] if has_db else dx
    with on_device(x):
        _layer_norm_bwd_dx_kernel[(G,)](
            dy, x, weight if has_dw else x, mean, rstd, dx, dw_part, db_part,
            dy.stride(0), x.stride(0), dx.stride(0), n_parts * N,
            M, N, rows_per_prog,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=triton.next_power_of_2(N),
            HAS_W=has_dw, HAS_DW=has_dw, HAS_DB=has_db,
            num_warps=cfg["num_warps"], num_stages=1,
        )
        if has_dw and has_db:
            column_sum(part, dweight, dbias)
        elif n_parts:
            column_sum(part, dweight if has_dw else dbias)
    return dx, dweight, dbias
