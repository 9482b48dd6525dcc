"""Measure this device's two ceilings: a large bf16 matrix product and a device-to-device copy.

    python benchmarks/ceilings.py OUT.json

The GPU check runs this first and points FASTGPT_CEILINGS at the file, so every fraction of
peak and every MFU in the benchmarks is against what this card did, not its datasheet
(benchutil.peaks). The copy counts bytes read plus bytes written; the product 2*M*N*K flops.
Random inputs (a product of zeros runs faster); the median of 10 CUDA-event-timed runs after
3 warm-ups. On the CPU (the dry run) it times tiny fp32 versions with a host clock and says so.
"""
import json
import statistics
import sys
import time

import torch


def _median_s(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def _matmul_flops(device, n, dtype):
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _median_s(lambda: torch.matmul(a, b, out=c))


def _copy_bytes_per_s(device, nbytes):
    src = torch.randint(0, 255, (nbytes,), device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_s(lambda: dst.copy_(src))


def measure():
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    n, dtype = (8192, torch.bfloat16) if cuda else (256, torch.float32)
    nbytes = (2 << 30) if cuda else (16 << 20)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "matmul": f"{n}x{n}x{n} {str(dtype)[6:]}",
        "matmul_flops": _matmul_flops(device, n, dtype),
        "copy": f"{nbytes >> 20} MiB device to device",
        "copy_bytes_per_s": _copy_bytes_per_s(device, nbytes),
        "note": "" if cuda else "CPU dry run: tiny sizes, host clock; not a ceiling of anything",
    }


def main(argv):
    result = measure()
    with open(argv[0], "w") as f:
        json.dump(result, f, indent=1)
    print(f"ceilings on {result['device']}: matmul {result['matmul_flops'] / 1e12:.1f} TFLOP/s ({result['matmul']}), "
          f"copy {result['copy_bytes_per_s'] / 1e12:.2f} TB/s ({result['copy']}) {result['note']}")


if __name__ == "__main__":
    main(sys.argv[1:])
