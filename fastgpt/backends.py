"""Backend choice for fastgpt's ops: pure policy, no op code.

Every public op in ``fastgpt.ops`` runs on one of three backends:

* ``reference`` — plain PyTorch (``fastgpt.reference``): nanoGPT's own path, any device.
* ``triton``    — fastgpt's Triton kernels: CUDA tensors, or CPU tensors under
                  ``TRITON_INTERPRET=1`` (the interpreter; slow, for tests).
* ``cuda``      — fastgpt's C++/CUDA extension ``fastgpt._C``: CUDA tensors when its CUDA part
                  was built, and CPU tensors through the extension's C++ CPU twin.

Each op registers itself here once (:func:`register`): its name, the backends that implement
it, the function that says whether a backend can run a given call, and a probe call for
:func:`report`. This module imports no op module.

``auto`` (the default) picks per call from device, dtype and shape: the fastest backend that can
run the call, which on CPU tensors is always ``reference``. A backend can be forced for a whole
model or process, or for single ops, with the environment (read on first use)::

    FASTGPT_BACKEND=triton                        # every op that has a triton backend; the others stay on auto
    FASTGPT_BACKEND=attention=triton,layer_norm=reference

or in code, which takes precedence over the environment::

    with fastgpt.use_backend("triton"): ...
    with fastgpt.use_backend(attention="triton", qkv_projection="cuda"): ...

No backend implements every op, so a process- or model-wide backend (``FASTGPT_BACKEND=triton``,
``use_backend("cuda")``, ``GPTConfig(backend=...)``) applies to the ops that have it and leaves
the others to an enclosing setting, or ``auto``; :func:`report` shows which op runs where.
Naming an op forces it: a backend the op lacks is an error then. The forced settings live in a
context variable, so threads and asyncio tasks each see their own (while torch.compile traces,
the thread's latest setting is read; see ``_TRACED``). A forced backend that cannot run a call
(an op named with a backend it lacks, or one that has it but not for this device, dtype or
shape) raises :class:`BackendError` saying why; nothing falls back silently.
:func:`backend_for` and :func:`report` tell which backend a call would use.
Under ``torch.compile`` the choice is made while tracing, so it is fixed in the compiled graph
(Dynamo guards on the forced setting and recompiles if it changes).
"""
import contextlib
import contextvars
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

BACKENDS = ("reference", "triton", "cuda")
log = logging.getLogger("fastgpt")


class BackendError(RuntimeError):
    """A forced backend cannot run the call, or a backend or op name is unknown."""


@dataclass(frozen=True)
class OpSpec:
    """One op as the policy sees it.

    backends: the backends that implement the op (``reference`` always among them).
    check(*args, **kwargs): raises on bad arguments, naming the argument and what was expected.
    auto_order(*args, **kwargs): the backends ``auto`` tries for a call, best first.
    why_not(name, *args, **kwargs): None when backend ``name`` (one of ``backends``) can run the
        (checked) call, else the reason it cannot: the op's limits.
    probe(device, dtype, B, T, C, H): arguments of a representative call, for :func:`report`.
    """

    name: str
    backends: tuple
    check: Callable
    auto_order: Callable
    why_not: Callable
    probe: Callable


_OPS: dict = {}


def register(spec: OpSpec) -> OpSpec:
    """Declare an op (each ops module does this once, at import)."""
    if spec.name in _OPS:
        raise RuntimeError(f"fastgpt op {spec.name!r} is registered twice")
    if "reference" not in spec.backends or not set(spec.backends) <= set(BACKENDS):
        raise RuntimeError(f"fastgpt op {spec.name!r}: backends {spec.backends} must include 'reference' and be among {BACKENDS}")
    _OPS[spec.name] = spec
    return spec


def registered() -> tuple:
    """The names of the registered ops."""
    return tuple(_OPS)


def _parse(spec: str, source: str) -> tuple:
    """'triton' -> (('*', 'triton'),); 'attention=triton,layer_norm=reference' -> per op."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        op, _, name = part.rpartition("=")
        op = op.strip() or "*"
        name = name.strip()
        if name not in BACKENDS + ("auto",):
            raise BackendError(f"{source}: unknown backend {name!r}; expected one of {', '.join(BACKENDS + ('auto',))}")
        if op != "*" and op not in _OPS:
            raise BackendError(f"{source}: unknown op {op!r}; expected one of {', '.join(_OPS)}")
        out.append((op, name))
    return tuple(out)


_ENV: dict = {}  # FASTGPT_BACKEND, parsed by check_environment()


def check_environment():
    """Read FASTGPT_BACKEND (raising BackendError on unknown names); called by ``fastgpt.ops``
    once every op has registered, so the op names in it can be checked."""
    _ENV.clear()
    _ENV.update(_parse(os.environ.get("FASTGPT_BACKEND", ""), "FASTGPT_BACKEND"))


_FORCED: contextvars.ContextVar = contextvars.ContextVar("fastgpt_forced_backends", default=())
# What Dynamo reads while tracing: the latest setting made by use_backend. Dynamo before
# torch 2.13 cannot trace ContextVar.get (fullgraph fails on it); it traces this list instead
# and guards on its contents, so a compiled model recompiles when the setting changes.
_TRACED = [()]


@contextlib.contextmanager
def use_backend(default: str = None, **per_op: str):
    """Force a backend for every op (``default``) and/or for single ops (keyword per op)."""
    spec = _parse(default, "use_backend") if default is not None else ()
    for op, name in per_op.items():
        spec += _parse(f"{op}={name}", "use_backend")
    token = _FORCED.set(_FORCED.get() + (dict(spec),))
    _TRACED[0] = _FORCED.get()
    try:
        yield
    finally:
        _FORCED.reset(token)
        _TRACED[0] = _FORCED.get()


def _lookup(spec: dict, op: str):
    """The backend ``spec`` forces for ``op``: its own entry, else the wide one (``*``) when the
    op has that backend (or it is ``auto``); None when ``spec`` says nothing about the op."""
    if op in spec:
        return spec[op]
    wide = spec.get("*")
    return wide if wide == "auto" or wide in _OPS[op].backends else None


def forced(op: str):
    """The backend forced for ``op`` and where it was forced, or (None, None). The innermost
    ``use_backend`` that covers the op (by name, or with a backend it has) decides, then the
    environment; a wide setting says nothing about an op without that backend."""
    for spec in reversed(_TRACED[0] if torch.compiler.is_compiling() else _FORCED.get()):
        name = _lookup(spec, op)
        if name is not None:
            return name, "use_backend"
    name = _lookup(_ENV, op)
    return (name, "FASTGPT_BACKEND") if name is not None else (None, None)


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_why_not(t: torch.Tensor, dtypes) -> Optional[str]:
    """Why the Triton kernels cannot run on tensors like ``t`` (None when they can).
    dtypes: the element types the kernel takes."""
    if not TRITON_INSTALLED:
        return "triton is not installed"
    if t.dtype not in dtypes:
        return f"the Triton kernels take {', '.join(str(d).replace('torch.', '') for d in dtypes)}, got {t.dtype}"
    if t.device.type == "cuda":
        return None
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"Triton kernels need CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got a {t.device.type} tensor"


def _spec(op: str) -> OpSpec:
    try:
        return _OPS[op]
    except KeyError:
        raise BackendError(f"unknown op {op!r}; expected one of {', '.join(_OPS)}") from None


def _why_not(spec: OpSpec, name: str, args, kwargs) -> Optional[str]:
    if name not in spec.backends:
        return f"fastgpt.ops.{spec.name} has no {name!r} backend (it has: {', '.join(spec.backends)})"
    return None if name == "reference" else spec.why_not(name, *args, **kwargs)


def backend_for(op: str, *args, **kwargs) -> str:
    """The backend ``fastgpt.ops.<op>(*args, **kwargs)`` runs on; raises :class:`BackendError`
    when a forced backend cannot run the call (and the op's own errors on bad arguments)."""
    spec = _spec(op)
    spec.check(*args, **kwargs)
    name, source = forced(op)
    if name is not None and name != "auto":
        reason = _why_not(spec, name, args, kwargs)
        if reason is not None:
            raise BackendError(f"fastgpt.ops.{op}: backend {name!r} was forced ({source}) but cannot run this call: {reason}")
    else:
        order = spec.auto_order(*args, **kwargs)
        name = next((b for b in order if _why_not(spec, b, args, kwargs) is None), "reference")
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug("fastgpt.ops.%s -> %s", op, name)
    return name


def report(device="cpu", dtype=torch.float32, **config) -> dict:
    """Which backend each op would use for a GPT on ``device``/``dtype``.

    config: GPTConfig-like sizes (n_embd, n_head, block_size, batch) for the probe shapes.
    Returns {op: backend or 'error: ...'}.
    """
    C, H = config.get("n_embd", 768), config.get("n_head", 12)
    T, B = config.get("block_size", 64), config.get("batch", 2)
    out = {}
    for op, spec in _OPS.items():
        try:
            out[op] = backend_for(op, *spec.probe(device, dtype, B, T, C, H))
        except BackendError as e:
            out[op] = f"error: {e}"
    return out
