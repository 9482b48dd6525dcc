"""Ahead-of-time compilation of ``@triton.jit`` kernels for NVIDIA targets, on a CPU-only machine.

Usage (in a test)::

    from aot import compile_for_target, assert_fits

    info = compile_for_target(
        _my_kernel,
        signature={"X_ptr": "*bf16", "Y_ptr": "*bf16", "N": "i32", "eps": "fp32", "BLOCK_N": "constexpr"},
        constexprs={"BLOCK_N": 1024},
        arch=90, num_warps=4, num_stages=1,
    )
    assert_fits(info, "my_kernel N=768 sm_90")

``signature`` names every kernel argument, in any order, with a Triton type string: pointers
``"*fp32"``, ``"*fp16"``, ``"*bf16"``, ``"*i32"``...; scalars ``"i32"``, ``"i64"``, ``"fp32"``;
``"constexpr"`` for each constexpr (its value then goes in ``constexprs``; a constexpr missing
from ``signature`` is added). ``arch`` is the compute capability as an int (80, 90).

The result holds ``n_regs`` (registers per thread), ``n_spills`` (spilled bytes: ptxas' stack
frame plus local memory), ``shared`` (dynamic + static shared memory in bytes) and
``shared_limit`` (the opt-in maximum per block on that arch), plus the raw ``cuobjdump`` figures.
With ``analyze=True`` it also holds ``analysis``: what ``scripts/sass_report.py`` reads from the
PTX and SASS (ptxas' advisories such as C7515, serialized wgmma; per-loop instruction counts;
blocks per SM). ``triton_path`` compiles with another Triton installed there (e.g.
``pip install --target DIR triton==3.6.0``), in a child process whose ``sys.path`` starts with it.
Registers and spills come from the compiled kernel's metadata when Triton put them there
(it does only after loading the binary on a GPU) and are always cross-checked against
``cuobjdump --dump-resource-usage`` (shipped with Triton next to ``ptxas``) on the cubin.

Under ``TRITON_INTERPRET=1`` (how the suite runs without a GPU) every ``@triton.jit`` function,
Triton's own library included, is an interpreter wrapper the compiler cannot use; the helper
then compiles in one child process, started with the interpreter off, that imports the
kernel's module by name (so kernels must live at module level in an importable module).
It calls ``pytest.skip`` when the installed Triton lacks the API it relies on or ``cuobjdump``
is missing; a kernel that fails to compile fails the test.

``TRITON_36`` is the GPU machine's Triton, which ``scripts/env.sh`` installs into
``.venv/triton-3.6.0`` and names in ``FASTGPT_TRITON36``, so that an API or codegen difference
shows up here, not in the lent minutes: the default suite compiles the launchers' GPT-2 picks
with it, skipping when it is absent from the default folder and failing when FASTGPT_TRITON36
names a folder without it. ``TRITONS`` is what the full ladders compile with: the installed
Triton, and 3.6 too with ``FASTGPT_AOT_FULL=1``.
"""
import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
import types

import pytest

from fastgpt.kernels.limits import SHARED_MEMORY_PER_BLOCK as SHARED_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import sass_report  # noqa: E402, I001  (the report script's analysis: the tests read SASS its way)

# The GPU machine's Triton (3.6.0), installed beside the environment by scripts/env.sh, which
# exports FASTGPT_TRITON36: set, it must be there (a missing one fails the tests that use it, so
# CI cannot lose the rehearsal silently); unset, the venv's default folder is used if present.
TRITON_36 = os.environ.get("FASTGPT_TRITON36") or os.path.join(sys.prefix, "triton-3.6.0")
TRITON_36_REQUIRED = bool(os.environ.get("FASTGPT_TRITON36"))
# What the full ladders compile with: the installed Triton, and 3.6 too with FASTGPT_AOT_FULL=1.
TRITONS = [None] + ([TRITON_36] if os.environ.get("FASTGPT_AOT_FULL") == "1" else [])


def triton_id(triton_path):
    """A test id for a Triton choice: "installed" or the folder's name."""
    return "installed" if triton_path is None else os.path.basename(triton_path.rstrip(os.sep))


class _Skip(Exception):
    """The installed triton cannot do what this helper needs (reported as a pytest skip)."""


def _triton_api():
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction
    except ImportError as e:
        raise _Skip(f"AOT compile needs triton.compiler.ASTSource and GPUTarget: {e}") from None
    return triton, GPUTarget, ASTSource, JITFunction


def _cuobjdump_path():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise _Skip(f"cuobjdump not found at {path}")
    return path


def _parse_resource_usage(text, name):
    """{'REG': int, 'STACK': int, 'SHARED': int, 'LOCAL': int} for function ``name``."""
    match = re.search(rf"Function {re.escape(name)}:\s*\n\s*(.*)", text)
    if match is None:
        raise AssertionError(f"cuobjdump reported no function {name!r}:\n{text}")
    fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", match.group(1)))
    return {k: int(fields.get(k, 0)) for k in ("REG", "STACK", "SHARED", "LOCAL")}


def _compile_here(module: str, qualname: str, signature: dict, constexprs: dict, arch: int,
                  num_warps: int, num_stages: int, divisible_by_16=None, analyze=False) -> dict:
    """Compile in this process; triton must not be in interpreter mode here."""
    import importlib

    triton, GPUTarget, ASTSource, JITFunction = _triton_api()
    kernel = importlib.import_module(module)
    for part in qualname.split("."):
        kernel = getattr(kernel, part)
    while not isinstance(kernel, JITFunction) and hasattr(kernel, "fn"):
        kernel = kernel.fn  # @triton.autotune / @triton.heuristics wrappers
    if not isinstance(kernel, JITFunction):
        raise TypeError(f"{module}.{qualname} is not a @triton.jit kernel: {kernel!r}")
    signature = dict(signature)
    for name in constexprs:
        signature[name] = "constexpr"
    missing = [a for a in kernel.arg_names if a not in signature]
    if missing:
        raise ValueError(f"signature of {qualname} lacks the kernel arguments {missing}")
    # The launcher specializes pointers (16-byte aligned allocations) and integers that are
    # multiples of 16; compiling without those hints would measure another, slower variant.
    if divisible_by_16 is None:
        divisible_by_16 = [a for a in kernel.arg_names if str(signature[a]).startswith("*")]
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in divisible_by_16}
    try:
        src = ASTSource(fn=kernel, signature={a: signature[a] for a in kernel.arg_names},
                        constexprs=dict(constexprs), attrs=attrs)
    except TypeError as e:
        raise _Skip(f"triton.compiler.ASTSource has another signature on this triton: {e}") from None
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([_cuobjdump_path(), "--dump-resource-usage", f.name],
                             check=True, capture_output=True, text=True).stdout
    meta = compiled.metadata
    usage = _parse_resource_usage(out, meta.name)

    # Triton fills n_regs / n_spills only when it loads the binary on a GPU.
    n_regs = getattr(compiled, "n_regs", None)
    n_spills = getattr(compiled, "n_spills", None)
    if n_regs is not None and n_regs != usage["REG"]:
        raise AssertionError(f"metadata says {n_regs} registers, cuobjdump {usage['REG']}")
    spill_bytes = usage["STACK"] + usage["LOCAL"]
    shared = (getattr(meta, "shared", 0) or 0) + usage["SHARED"]
    info = {
        "name": meta.name,
        "arch": arch,
        "num_warps": num_warps,
        "num_stages": num_stages,
        "n_regs": usage["REG"],
        "n_spills": spill_bytes if n_spills is None else max(n_spills, spill_bytes),
        "shared": shared,
        "shared_limit": SHARED_LIMIT.get(arch, SHARED_LIMIT[80]),
        "cuobjdump": usage,
        "triton": triton.__version__,
    }
    if analyze:
        info["analysis"] = sass_report.analyze(compiled.asm, arch, num_warps, shared)
    return info


def _serve():
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    # Replies go to the original stdout; anything else printed (triton, ptxas) goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            reply = {"ok": _compile_here(**json.loads(line))}
        except _Skip as e:
            reply = {"skip": str(e)}
        except Exception:
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


_workers = {}


def _compile_in_worker(request: dict, triton_path=None) -> dict:
    # Under TRITON_INTERPRET=1 every @triton.jit function, triton's own library included, is an
    # interpreter wrapper that the compiler cannot use, so compile in a child process that
    # imports the kernel's module with the interpreter off. One child per Triton serves the
    # whole session.
    worker = _workers.get(triton_path)
    if worker is None or worker.poll() is not None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([triton_path] * bool(triton_path) + [p for p in sys.path if p])
        worker = subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(_stop_worker, worker)
        _workers[triton_path] = worker
    worker.stdin.write(json.dumps(request) + "\n")
    worker.stdin.flush()
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError("the AOT compile worker died (see its stderr above)")
    return json.loads(line)


def _stop_worker(worker):
    worker.stdin.close()  # the worker's loop ends at EOF
    worker.wait(timeout=30)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def compile_for_target(kernel, signature: dict, constexprs: dict, arch: int, num_warps: int,
                       num_stages: int, divisible_by_16=None, analyze=False,
                       triton_path=None) -> dict:
    """Compile ``kernel`` for ``sm_<arch>`` and return its resource usage (see the module doc).

    divisible_by_16: the arguments the launcher's specialization marks as multiples of 16
    (as Triton does at run time for 16-byte-aligned pointers and such integers); default: every
    pointer argument. analyze: add ``analysis`` (ptxas advisories, SASS loop counts,
    occupancy). triton_path: compile with the Triton installed in that directory. A missing
    folder skips, or fails when it is the required ``TRITON_36``.
    """
    fn = kernel
    while hasattr(fn, "fn"):  # JITFunction, interpreter, autotune and heuristics wrappers
        fn = fn.fn
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"expected a @triton.jit kernel, got {kernel!r}")
    request = dict(module=fn.__module__, qualname=fn.__qualname__, signature=dict(signature),
                   constexprs=dict(constexprs), arch=int(arch), num_warps=int(num_warps),
                   num_stages=int(num_stages),
                   divisible_by_16=None if divisible_by_16 is None else list(divisible_by_16),
                   analyze=bool(analyze))
    if "<locals>" in fn.__qualname__ or fn.__module__ == "__main__":
        raise ValueError(f"{fn.__qualname__} must be a module-level kernel of an importable module")
    if triton_path is not None and not os.path.isdir(os.path.join(triton_path, "triton")):
        message = f"no Triton at {triton_path} (scripts/env.sh installs triton 3.6.0 there)"
        if triton_path == TRITON_36 and TRITON_36_REQUIRED:
            pytest.fail(f"{message}; FASTGPT_TRITON36 says it should be there")
        pytest.skip(message)
    if not _interpreting() and triton_path is None:
        try:
            return _compile_here(**request)
        except _Skip as e:
            pytest.skip(str(e))
    reply = _compile_in_worker(request, triton_path)
    if "skip" in reply:
        pytest.skip(reply["skip"])
    if "error" in reply:
        raise AssertionError(f"AOT compile of {fn.__qualname__} for sm_{arch} failed:\n{reply['error']}")
    return reply["ok"]


def assert_fits(info: dict, name: str):
    """Fail, with the numbers, when the kernel spills or needs more shared memory than allowed;
    with an analysis, also on any ptxas advisory (C7515: serialised wgmma) or local memory in the SASS."""
    where = f"{name} (sm_{info['arch']}, num_warps={info['num_warps']}, num_stages={info['num_stages']})"
    assert info["n_spills"] == 0, (
        f"{where} spills: {info['n_spills']} bytes of stack/local memory at {info['n_regs']} "
        f"registers/thread (cuobjdump: {info['cuobjdump']})"
    )
    analysis = info.get("analysis")
    if analysis is not None:
        ptxas = analysis["ptxas"]
        assert not ptxas["c7515"], (
            f"{where}: ptxas serialises wgmma (C7515: non-wgmma instructions define accumulator "
            f"registers between a wgmma and its wait); advisories {ptxas['advisories']}")
        assert not ptxas["advisories"], f"{where}: ptxas advisories {ptxas['advisories']}:\n{ptxas['log']}"
        assert ptxas["spill_stores"] == ptxas["spill_loads"] == ptxas["stack"] == 0, (
            f"{where}: ptxas -v reports spills: {ptxas}")
        assert analysis["sass"]["total"]["LOCAL"] == 0, f"{where}: SASS uses local memory"
    assert info["shared"] <= info["shared_limit"], (
        f"{where} needs {info['shared']} bytes of shared memory, over the "
        f"{info['shared_limit']}-byte limit per block"
    )


if __name__ == "__main__":
    _serve()
