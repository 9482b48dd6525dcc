"""Peak rates of the machines fastgpt reports utilisation against, in one table."""

# Device-name substring -> (HBM bytes/s, dense bf16 tensor-core FLOP/s), from the vendors'
# datasheets; first match wins, so the more specific names come first.
GPU_PEAKS = (
    ("H200", 4.8e12, 989e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),
    ("A100", 2.0e12, 312e12),
    ("L40S", 0.864e12, 362e12),
)
# MFU's denominator for a GPU missing from the table: nanoGPT's (A100 bf16).
DEFAULT_GPU_FLOPS = 312e12
# One AVX2 core's fp32 FMA peak (2 x 8-wide FMA at ~3 GHz).
CPU_CORE_FLOPS = 1e11


def gpu_peaks(name: str):
    """(bytes/s, FLOP/s) of the GPU called ``name``, or (None, None) when it is not in the table."""
    return next(((bw, flops) for key, bw, flops in GPU_PEAKS if key in name), (None, None))


def peak_flops(device_name: str, cpu_threads: int = 1) -> float:
    """The FLOP/s that MFU is measured against: the GPU's bf16 peak, or all the CPU cores used."""
    if device_name == "cpu":
        return cpu_threads * CPU_CORE_FLOPS
    return gpu_peaks(device_name)[1] or DEFAULT_GPU_FLOPS
