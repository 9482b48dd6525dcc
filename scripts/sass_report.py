"""What the compiler made of fastgpt's Triton kernels, read without a GPU.

Compiles every attention, LayerNorm and bias+GELU kernel ahead of time, with the config its
launcher picks at the given shapes, for sm_80 and/or sm_90, and prints per kernel: warps,
stages, tile, registers, shared memory, spills, blocks per SM (registers, shared memory and
warps together), ptxas' advisories (C7515: serialized wgmma), and per loop iteration of the
kernel's loops: HGMMA/HMMA, WARPGROUP.ARRIVE/DEPBAR, MUFU.EX2, TMA loads (UTMALDG), cp.async
(LDGSTS), 128-bit global loads/stores.

    python scripts/sass_report.py                      # GPT-2 124M shapes, sm_90 and sm_80
    python scripts/sass_report.py --arch 90 --md out.md
    python scripts/sass_report.py --tutorial path/to/06-fused-attention.py   # add its figures

The analysis functions (``ptxas_report``, ``sass_stats``, ``blocks_per_sm``) are what the AOT
tests (tests/aot.py) use, so the report and the tests read the compiler's output the same way.
Everything here is compiler output: registers, instruction counts and occupancy, no timings.
"""
import os
import re
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-SM resources: registers, shared memory (bytes, what blocks can share), warps, blocks.
SM = {
    80: {"regs": 65536, "shared": 167936, "warps": 64, "blocks": 32},
    90: {"regs": 65536, "shared": 233472, "warps": 64, "blocks": 32},
}
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
WARP_ALLOC_GRANULARITY = 4
SHARED_RESERVED_PER_BLOCK = 1024


def _nvidia_bin(tool):
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{tool} not found at {path} (it ships with triton's wheel)")
    return path


def ptxas_report(ptx: str, arch: int) -> dict:
    """Run ``ptxas -v -O3`` on Triton's PTX; return registers, spills and advisories.

    ``c7515`` is True when ptxas says wgmma instructions are serialized (C7515: non-wgmma
    instructions define accumulator registers between a wgmma and its wait).
    """
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([_nvidia_bin("ptxas"), "-v", f"-arch={gpu}", "-O3", src,
                              "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{text}")
    regs = re.search(r"Used (\d+) registers", text)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      text)
    advisories = sorted({m.group(1) for m in re.finditer(r"\((C\d+)\)", text)})
    return {
        "regs": int(regs.group(1)) if regs else None,
        "stack": int(frame.group(1)) if frame else 0,
        "spill_stores": int(frame.group(2)) if frame else 0,
        "spill_loads": int(frame.group(3)) if frame else 0,
        "advisories": advisories,
        "c7515": "C7515" in advisories,
        "log": text.strip(),
    }


def sass_text(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([_nvidia_bin("nvdisasm"), "-c", f.name], capture_output=True,
                             text=True, check=True)
    return res.stdout


_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")

# Counted per loop body (and per kernel): name -> predicate on (opcode, operands).
COUNTERS = {
    "HGMMA": lambda op, args: op.startswith("HGMMA"),
    "HMMA": lambda op, args: op.startswith("HMMA"),
    "ARRIVE": lambda op, args: op == "WARPGROUP.ARRIVE",
    "DEPBAR": lambda op, args: op.startswith("WARPGROUP.DEPBAR"),
    "MUFU.EX2": lambda op, args: op == "MUFU.EX2",
    "UTMALDG": lambda op, args: op.startswith("UTMALDG"),
    "UTMASTG": lambda op, args: op.startswith("UTMASTG"),
    "LDGSTS": lambda op, args: op.startswith("LDGSTS"),
    "LDG": lambda op, args: op.startswith("LDG.") or op == "LDG",
    "LDG.128": lambda op, args: op.startswith("LDG.") and op.endswith(".128"),
    "STG": lambda op, args: op.startswith("STG.") or op == "STG",
    "STG.128": lambda op, args: op.startswith("STG.") and op.endswith(".128"),
    "BAR": lambda op, args: op.startswith("BAR."),
    "LOCAL": lambda op, args: op.startswith(("LDL", "STL")),
}


def _count(instrs):
    out = {name: 0 for name in COUNTERS}
    for op, args in instrs:
        for name, pred in COUNTERS.items():
            if pred(op, args):
                out[name] += 1
    out["instructions"] = len(instrs)
    return out


def sass_stats(sass: str) -> dict:
    """Instruction counts of a kernel's SASS (``nvdisasm -c``): the whole kernel and each loop.

    A loop is the instructions from a label to a later branch back to it; only innermost
    loops are kept, in program order. Counts inside a loop are per iteration (static: a
    branch inside the body counts both sides).
    """
    instrs, labels, back_edges = [], {}, []
    for line in sass.splitlines():
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        op, args = m.group(2), m.group(3)
        if op.startswith("BRA") or op.startswith("JMP"):
            t = _TARGET.search(args)
            if t and t.group(1) in labels and labels[t.group(1)] <= len(instrs):
                back_edges.append((labels[t.group(1)], len(instrs)))
        instrs.append((op, args))
    # Innermost loops: no other back edge nested strictly inside.
    loops = []
    for lo, hi in sorted(set(back_edges)):
        if lo == hi:  # the trailing `BRA self` trap
            continue
        if any(lo <= a and b <= hi and (a, b) != (lo, hi) and a != b for a, b in back_edges):
            continue
        loops.append(dict(_count(instrs[lo:hi + 1]), start=lo, end=hi))
    return {"total": _count(instrs), "loops": loops}


def main_loop(stats: dict):
    """The loop doing the most matrix work (HGMMA or HMMA), else the longest; None if none."""
    if not stats["loops"]:
        return None
    return max(stats["loops"], key=lambda loop: (loop["HGMMA"] + loop["HMMA"], loop["instructions"]))


def blocks_per_sm(arch: int, regs: int, num_warps: int, shared: int) -> dict:
    """Co-resident blocks per SM allowed by registers, shared memory and warps (the
    occupancy calculator's rules); ``blocks`` is the smallest."""
    sm = SM[90 if arch >= 90 else 80]
    reg_per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    warps_by_regs = sm["regs"] // reg_per_warp // WARP_ALLOC_GRANULARITY * WARP_ALLOC_GRANULARITY
    by = {
        "regs": warps_by_regs // num_warps,
        "shared": sm["shared"] // (shared + SHARED_RESERVED_PER_BLOCK),
        "warps": sm["warps"] // num_warps,
    }
    return dict(by, blocks=min(min(by.values()), sm["blocks"]))


def analyze(compiled_asm: dict, arch: int, num_warps: int, shared: int) -> dict:
    """Everything the report and the tests need from one compiled kernel (Triton's ``asm``)."""
    ptxas = ptxas_report(compiled_asm["ptx"], arch)
    stats = sass_stats(sass_text(compiled_asm["cubin"]))
    return {
        "ptxas": {k: v for k, v in ptxas.items() if k != "log"},
        "sass": stats,
        "occupancy": blocks_per_sm(arch, ptxas["regs"] or 0, num_warps, shared),
    }
