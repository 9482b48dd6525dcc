"""The numeric-equivalence rule every kernel test uses (see shared/CONVENTIONS.md).

flash-attention's rule: a kernel's max error against the fp32 oracle may be at most twice the
error of the plain PyTorch op run in the same low precision, plus a small floor. The floor
exists because in fp32 the plain op *is* the oracle (its error is 0), and a kernel that sums
in a different order still differs by a few ulps.
"""
import torch

# Floor, relative to the oracle's largest magnitude, per input dtype.
FLOOR = {
    torch.float32: 2e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def assert_2x_rule(name, out, plain, oracle, dtype=None, floor=None):
    """Assert ``max|out - oracle| <= 2 * max|plain - oracle| + floor``.

    out:    the kernel's result (any dtype).
    plain:  the plain PyTorch op run in the kernel's (low) precision.
    oracle: the reference op run in fp32 on upcast inputs.
    dtype:  the precision the kernel ran in (picks the floor); defaults to ``out.dtype``.
    """
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != oracle {tuple(oracle.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values in the kernel's output"
    dtype = dtype or out.dtype
    scale = max(1.0, oracle.detach().abs().max().item()) if oracle.numel() else 1.0
    floor = FLOOR[dtype] * scale if floor is None else floor
    err, base = max_err(out, oracle), max_err(plain, oracle)
    bound = 2 * base + floor
    assert err <= bound, (
        f"{name}: max error {err:.3e} vs fp32 oracle exceeds 2 x plain-torch error "
        f"{base:.3e} + floor {floor:.1e} (= {bound:.3e}) in {dtype}"
    )
