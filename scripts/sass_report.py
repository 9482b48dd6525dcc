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
import datetime
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


# =============================================================================================
# The report: fastgpt's kernels at GPT-2 124M shapes, compiled ahead of time.
# =============================================================================================

# Streaming multiprocessors of the reference parts: H100 SXM (sm_90), A100 SXM (sm_80).
SMS = {90: 132, 80: 108}
# GPT-2 124M training step: batch 16 x 1024 tokens, 12 heads of 64, n_embd 768, MLP 3072.
GPT2 = {"B": 16, "T": 1024, "H": 12, "D": 64, "C": 768, "MLP": 3072}


def _tests_on_path():
    tests = os.path.join(ROOT, "tests")
    if tests not in __import__("sys").path:
        __import__("sys").path.insert(0, tests)


def _divisible(kernel, signature, values):
    """What Triton's launcher would specialise: pointers (16-byte aligned allocations) and the
    integer arguments whose values at this shape are multiples of 16."""
    out = [a for a in kernel.arg_names if str(signature.get(a, "")).startswith("*")]
    return out + [a for a, v in values.items() if isinstance(v, int) and v % 16 == 0]


def _attention_rows(arch, dropout_ps=(0.0, 0.1)):
    """(label, job, divisible, grid programs) of the attention launches of a GPT-2 step."""
    import torch

    _tests_on_path()
    import test_aot_attention as T

    from fastgpt.kernels import attention as A
    from fastgpt.kernels.limits import SHARED_MEMORY_PER_BLOCK

    B, Tn, H, D = GPT2["B"], GPT2["T"], GPT2["H"], GPT2["D"]
    # q, k, v: views of the (B, T, 3, H, D) projection; o, do, dq, dk, dv contiguous.
    qkv = {"b": Tn * 3 * H * D, "h": D, "t": 3 * H * D}
    plain = {"b": Tn * H * D, "h": Tn * D, "t": D}
    rows = []
    for dropout_p in dropout_ps:
        for kind, tq, what in (("fwd", Tn, "training"), ("bwd", Tn, "training"), ("fwd", 1, "decode, Tk = 1024")):
            cfg = A.pick_config(kind, arch, D, torch.bfloat16, dropout_p > 0, tq, Tn, SHARED_MEMORY_PER_BLOCK[arch])
            job = T.Job(kind, arch, D, "bf16", tq == Tn, dropout_p > 0, T._cfg_tuple(cfg), A.use_tma(arch, torch.bfloat16))
            sig, _ = T.signature(job)
            values = {"H": H, "Tq": tq, "Tk": Tn}
            for name in sig:
                if name.startswith("stride_"):
                    tensor, dim = name[len("stride_"):].rsplit("_", 1)
                    values[name] = (qkv if tensor in ("q", "k", "v") and tq == Tn else plain)[dim]
            bm, bn = job.cfg[0], job.cfg[1]
            grid = (-(-tq // bm) if kind == "fwd" else max(-(-Tn // bn), -(-tq // bm))) * B * H
            label = f"{kind} ({what}{', dropout' if dropout_p else ''})"
            rows.append((label, job, _divisible(T.KERNELS[kind], sig, values), grid))
    pre = T.Job("pre", arch, D, "bf16", False, False, (64, 64, 4, 1), False)
    sig, _ = T.signature(pre)
    values = {"H": H, "Tq": Tn, **{n: D if n.endswith("_t") else Tn * D * (H if n.endswith("_b") else 1) for n in sig if n.startswith("stride_")}}
    rows.append(("bwd preprocess (delta)", pre, _divisible(T.KERNELS["pre"], sig, values), -(-Tn // 64) * B * H))
    return rows


def _norm_rows(arch):
    """(label, kernel, signature, constexprs, warps, divisible, grid programs, elements per thread
    per step) of the LayerNorm and bias+GELU launches of a GPT-2 step."""
    import torch

    _tests_on_path()
    import test_aot_norms as N

    from fastgpt.kernels import _reduce, bias_gelu, layer_norm

    for mod in (_reduce, bias_gelu, layer_norm):
        mod.num_sms = lambda device, _sms=SMS[arch]: _sms
    device = torch.device("cuda")
    M, C, F = GPT2["B"] * GPT2["T"], GPT2["C"], GPT2["MLP"]
    rows = []
    cfg = layer_norm.launch_config(C)
    w = cfg["num_warps"]
    sig = N.ln_signature("fwd", "bf16")
    cx = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": True, "HAS_B": True}
    vals = {"stride_x_row": C, "stride_y_row": C, "M": M, "N": C}
    rows.append(("LayerNorm fwd, N = 768", layer_norm._layer_norm_fwd_kernel, sig, cx, w,
                 _divisible(layer_norm._layer_norm_fwd_kernel, sig, vals), -(-M // cfg["BLOCK_M"]),
                 cfg["BLOCK_M"] * cfg["BLOCK_N"] // (32 * w)))
    G, rpp = layer_norm.backward_grid(M, C, device)
    sig = N.ln_signature("dx", "bf16")
    cx = {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_W": True, "HAS_DW": True, "HAS_DB": True}
    vals = {"stride_dy_row": C, "stride_x_row": C, "stride_dx_row": C, "stride_part_row": 2 * C, "M": M, "N": C, "ROWS_PER_PROG": rpp}
    rows.append((f"LayerNorm bwd dx, N = 768 ({rpp} rows/program)", layer_norm._layer_norm_bwd_dx_kernel, sig, cx, w,
                 _divisible(layer_norm._layer_norm_bwd_dx_kernel, sig, vals), G, cfg["BWD_BLOCK_M"] * cfg["BLOCK_N"] // (32 * w)))
    for label, cols, g in (("LayerNorm dweight+dbias column sum", 2 * C, G),):
        bn = _reduce.column_block(cols, device)
        sig = {"Part_ptr": "*fp32", "Out_ptr": "*bf16", "Out2_ptr": "*bf16", "G": "i32", "N": "i32", "N1": "i32"}
        cx = {"BLOCK_G": _reduce.TILE_ELEMENTS // bn, "BLOCK_N": bn, "HAS_OUT2": True}
        rows.append((f"{label} ({g} x {cols})", _reduce._column_sum_kernel, sig, cx, _reduce.NUM_WARPS,
                     _divisible(_reduce._column_sum_kernel, sig, {"G": g, "N": cols, "N1": C}), -(-cols // bn),
                     _reduce.TILE_ELEMENTS // (32 * _reduce.NUM_WARPS)))
    cfg = bias_gelu.launch_config(F)
    w = cfg["num_warps"]
    sig = N.gelu_signature("fwd")
    cx = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": True, "APPROX_TANH": False}
    vals = {"stride_x_row": F, "stride_y_row": F, "M": M, "N": F}
    rows.append(("bias+GELU fwd (erf), N = 3072", bias_gelu._bias_gelu_fwd_kernel, sig, cx, w,
                 _divisible(bias_gelu._bias_gelu_fwd_kernel, sig, vals), -(-M // cfg["BLOCK_M"]) * -(-F // cfg["BLOCK_N"]),
                 cfg["BLOCK_M"] * cfg["BLOCK_N"] // (32 * w)))
    G, rpp = bias_gelu.backward_grid(M, F, device)
    sig = N.gelu_signature("bwd")
    cx = {"BLOCK_M": cfg["BWD_BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "HAS_BIAS": True, "APPROX_TANH": False}
    vals = {"stride_dy_row": F, "stride_x_row": F, "stride_dx_row": F, "M": M, "N": F, "ROWS_PER_PROG": rpp}
    rows.append((f"bias+GELU bwd (erf), N = 3072 ({rpp} rows/program)", bias_gelu._bias_gelu_bwd_kernel, sig, cx, w,
                 _divisible(bias_gelu._bias_gelu_bwd_kernel, sig, vals), G * -(-F // cfg["BLOCK_N"]),
                 cfg["BWD_BLOCK_M"] * cfg["BLOCK_N"] // (32 * w)))
    bn = _reduce.column_block(F, device)
    sig = {"Part_ptr": "*fp32", "Out_ptr": "*bf16", "Out2_ptr": "*bf16", "G": "i32", "N": "i32", "N1": "i32"}
    cx = {"BLOCK_G": _reduce.TILE_ELEMENTS // bn, "BLOCK_N": bn, "HAS_OUT2": False}
    rows.append((f"bias+GELU dbias column sum ({G} x {F})", _reduce._column_sum_kernel, sig, cx, _reduce.NUM_WARPS,
                 _divisible(_reduce._column_sum_kernel, sig, {"G": G, "N": F, "N1": F}), -(-F // bn),
                 _reduce.TILE_ELEMENTS // (32 * _reduce.NUM_WARPS)))
    return rows


def _load_tutorial(path, arch):
    """Import Triton's tutorial 06 (python/tutorials/06-fused-attention.py) without a GPU: its
    module level asks the driver for a device and filters configs by compute capability."""
    import contextlib
    import importlib.util
    import sys

    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    class _Driver:
        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

    @contextlib.contextmanager
    def stubs():
        cfg, cap = triton.runtime.driver, torch.cuda.get_device_capability
        saved = cfg._active
        cfg.set_active(_Driver())
        torch.cuda.get_device_capability = lambda *a, **k: (arch // 10, arch % 10)
        try:
            yield
        finally:
            torch.cuda.get_device_capability = cap
            cfg._active = saved

    spec = importlib.util.spec_from_file_location("triton_tutorial_06", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    with stubs():
        spec.loader.exec_module(mod)
    return mod


def _tutorial_rows(path, arch):
    """The tutorial's TMA forward (128x64, 4 warps, 3 stages, as the issue compares) and its
    backward (its own fixed config: 4 warps, 5 stages, 32/128 and 128/32 tiles), hs = 64, fp16,
    causal; N_CTX = 1024."""
    mod = _load_tutorial(path, arch)
    D, T = 64, 1024
    fwd = getattr(mod._attn_fwd_tma, "fn", mod._attn_fwd_tma)
    sig = dict(sm_scale="fp32", M="*fp32", Z="i32", H="i32", N_CTX="i32",
               desc_q=f"tensordesc<fp16[128, {D}]>", desc_k=f"tensordesc<fp16[64, {D}]>",
               desc_v=f"tensordesc<fp16[64, {D}]>", desc_o=f"tensordesc<fp16[128, {D}]>")
    cx = dict(HEAD_DIM=D, BLOCK_M=128, BLOCK_N=64, FP8_OUTPUT=False, STAGE=3)
    rows = [("tutorial 06 fwd (TMA)", fwd, sig, cx, 4, 3, ["M", "N_CTX"], -(-T // 128) * GPT2["B"] * GPT2["H"])]
    sig = dict(Q="*fp16", K="*fp16", V="*fp16", sm_scale="fp32", DO="*fp16", DQ="*fp16", DK="*fp16",
               DV="*fp16", M="*fp32", D="*fp32", stride_z="i32", stride_h="i32", stride_tok="i32",
               H="i32", N_CTX="i32")
    cx = dict(stride_d=1, BLOCK_M1=32, BLOCK_N1=128, BLOCK_M2=128, BLOCK_N2=32, BLK_SLICE_FACTOR=2, HEAD_DIM=D)
    div = ["Q", "K", "V", "DO", "DQ", "DK", "DV", "M", "D", "stride_z", "stride_h", "stride_tok", "N_CTX"]
    rows.append(("tutorial 06 bwd", mod._attn_bwd, sig, cx, 4, 5, div, -(-T // 128) * GPT2["B"] * GPT2["H"]))
    return rows


def _fmt_loops(analysis):
    loops = [lp for lp in analysis["sass"]["loops"] if lp["HGMMA"] + lp["HMMA"] > 0]
    return loops


def _attention_table(results, arch):
    cols = ["kernel", "warps", "stages", "tile", "regs", "smem KiB", "spills", "blocks/SM", "programs (waves)",
            "C7515", "loop: instr", "HGMMA / HMMA", "ARRIVE", "DEPBAR", "MUFU.EX2", "UTMALDG", "LDGSTS"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for label, warps, stages, tile, info, programs in results:
        a = info["analysis"]
        occ = a["occupancy"]["blocks"]
        waves = programs / (SMS[arch] * occ) if occ else float("inf")
        kernel = [label, warps, stages, tile, info["n_regs"], f"{info['shared'] / 1024:.1f}", info["n_spills"], occ,
                  f"{programs} ({waves:.1f})", "yes" if a["ptxas"]["c7515"] else "no"]
        loops = _fmt_loops(a) or [None]
        for i, lp in enumerate(loops):
            if lp is None:
                loop = ["no loop"] + [""] * 6
            else:
                mma = f"{lp['HGMMA']} HGMMA" if lp["HGMMA"] else f"{lp['HMMA']} HMMA"
                loop = [lp["instructions"], mma, lp["ARRIVE"], lp["DEPBAR"], lp["MUFU.EX2"], lp["UTMALDG"], lp["LDGSTS"]]
            cells = (kernel if i == 0 else [""] * len(kernel)) + loop
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _norm_table(results, arch):
    head = ("| kernel | warps | tile | regs | smem KiB | spills | blocks/SM | programs / SMs | LDG.128 / LDG "
            "| STG.128 / STG | loop: instr | barriers | SASS instr per element |")
    lines = [head, "|" + " --- |" * 13]
    for label, warps, tile, info, programs, per_thread in results:
        a = info["analysis"]
        t = a["sass"]["total"]
        loops = a["sass"]["loops"]
        lp = max(loops, key=lambda x: x["instructions"]) if loops else None
        body = lp if lp else t
        per_elem = body["instructions"] / per_thread
        lines.append(f"| {label} | {warps} | {tile} | {info['n_regs']} | {info['shared'] / 1024:.1f} | {info['n_spills']} "
                     f"| {a['occupancy']['blocks']} | {programs} / {SMS[arch]} | {t['LDG.128']} / {t['LDG']} "
                     f"| {t['STG.128']} / {t['STG']} | {lp['instructions'] if lp else 'no loop'} | {body['BAR']} "
                     f"| {per_elem:.1f} |")
    return lines


def report(archs, tutorial=None):
    """Markdown lines of the report (compiles everything; minutes on 2 cores, cached after)."""
    import triton

    _tests_on_path()
    from aot import compile_for_target

    out = [f"# What the compiler made of fastgpt's kernels ({datetime.date.today().isoformat()})", "",
           f"Compiler output only (Triton {triton.__version__}, ptxas/nvdisasm from its wheel, "
           "`python scripts/sass_report.py`); no GPU ran, nothing here is a timing.",
           "GPT-2 124M training shapes: B = 16, T = 1024, 12 heads of 64, bf16, causal; n_embd 768, MLP 3072. "
           f"Blocks per SM from registers, shared memory and warps; waves = programs / (SMs x blocks per SM) "
           f"with {SMS[90]} SMs (H100 SXM) on sm_90 and {SMS[80]} (A100) on sm_80. Per-loop figures are static "
           "counts of one iteration of each innermost SASS loop that issues MMA, in code order: the forward's "
           "masked (diagonal) then unmasked KV loop; the backward's dk/dv loop over unmasked query rows (its "
           "masked rows are unrolled, no loop), then dq's masked and unmasked KV loops. Integer arguments are "
           "specialised as Triton's launcher does at these shapes (multiples of 16)."]
    for arch in archs:
        out += ["", f"## Attention, sm_{arch}", ""]
        results = []
        for label, job, div, programs in _attention_rows(arch):
            import test_aot_attention as T

            sig, cx = T.signature(job)
            bm, bn, w, s = job.cfg
            info = compile_for_target(T.KERNELS[job.kind], sig, cx, arch, w, s, divisible_by_16=div, analyze=True)
            tile = f"{bm}x{bn}" + (" TMA" if job.tma else "")
            results.append((label, w, s, tile, info, programs))
        if tutorial and arch >= 90:
            for label, kernel, sig, cx, w, s, div, programs in _tutorial_rows(tutorial, arch):
                info = compile_for_target(kernel, sig, cx, arch, w, s, analyze=True,
                                          divisible_by_16=[a for a in kernel.arg_names if str(sig.get(a, "")).startswith("*")] + div)
                tile = "128x64 TMA" if "fwd" in label else "32x128, 128x32"
                results.append((label, w, s, tile, info, programs))
        out += _attention_table(results, arch)
        if tutorial and arch >= 90:
            out += ["", f"The tutorial rows: Triton's python/tutorials/06-fused-attention.py ({os.path.basename(tutorial)}) "
                        "compiled the same way at its own configs (fp16, N_CTX = 1024, hs = 64, causal)."]
        out += ["", f"## LayerNorm and bias+GELU, sm_{arch}", ""]
        results = []
        for label, kernel, sig, cx, w, div, programs, per_thread in _norm_rows(arch):
            info = compile_for_target(kernel, sig, cx, arch, w, 1, divisible_by_16=div, analyze=True)
            tile = f"{cx.get('BLOCK_M', cx.get('BLOCK_G'))}x{cx['BLOCK_N']}"
            results.append((label, w, tile, info, programs, per_thread))
        out += _norm_table(results, arch)
    return out


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=[80, 90])
    parser.add_argument("--md", help="also write the report to this Markdown file")
    parser.add_argument("--tutorial", help="path to Triton's python/tutorials/06-fused-attention.py "
                                           "(not part of fastgpt) to compile beside ours")
    args = parser.parse_args(argv)
    lines = report(args.arch, args.tutorial)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
