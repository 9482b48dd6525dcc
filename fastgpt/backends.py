"""Backend choice for fastgpt's ops.

Every public op in ``fastgpt.ops`` runs on one of three backends:

* ``reference`` — plain PyTorch (``fastgpt.reference``): nanoGPT's own path, any device.
* ``triton``    — fastgpt's Triton kernels: CUDA tensors, or CPU tensors under
                  ``TRITON_INTERPRET=1`` (the interpreter; slow, for tests).
* ``cuda``      — fastgpt's C++/CUDA extension ``fastgpt._C``: CUDA tensors when its CUDA part
                  was built, and CPU tensors through the extension's C++ CPU twin.

``auto`` (the default) picks per call from device, dtype and shape: the fastest backend that can
run the call, which on CPU tensors is always ``reference``. A backend can be forced for every op
or for single ops, with the environment (read once, at import)::

    FASTGPT_BACKEND=triton                        # every op
    FASTGPT_BACKEND=attention=triton,layer_norm=reference

or in code, which takes precedence over the environment::

    with fastgpt.use_backend("triton"): ...
    with fastgpt.use_backend(attention="triton", qkv_projection="cuda"): ...

A forced backend that cannot run a call raises :class:`BackendError` saying why; nothing falls
back silently. :func:`backend_for` and :func:`report` tell which backend a call would use. Under
``torch.compile`` the choice is made while tracing, so it is fixed in the compiled graph (Dynamo
guards on the forced setting and recompiles if it changes).
"""
import contextlib
import importlib.util
import logging
import os

import torch

BACKENDS = ("reference", "triton", "cuda")
OPS = ("layer_norm", "bias_gelu", "attention", "qkv_projection")
log = logging.getLogger("fastgpt")


class BackendError(RuntimeError):
    """A forced backend cannot run the call, or a backend name is unknown."""


def _parse(spec: str, source: str) -> dict:
    """'triton' -> {'*': 'triton'}; 'attention=triton,layer_norm=reference' -> per op."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        op, _, name = part.rpartition("=")
        op = op.strip() or "*"
        name = name.strip()
        if name not in BACKENDS + ("auto",):
            raise BackendError(f"{source}: unknown backend {name!r}; expected one of {', '.join(BACKENDS + ('auto',))}")
        if op != "*" and op not in OPS:
            raise BackendError(f"{source}: unknown op {op!r}; expected one of {', '.join(OPS)}")
        out[op] = name
    return out


_ENV = _parse(os.environ.get("FASTGPT_BACKEND", ""), "FASTGPT_BACKEND")
_STACK: list = []
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


@contextlib.contextmanager
def use_backend(default: str = None, **per_op: str):
    """Force a backend for every op (``default``) and/or for single ops (keyword per op)."""
    spec = {}
    if default is not None:
        spec.update(_parse(default, "use_backend"))
    for op, name in per_op.items():
        spec.update(_parse(f"{op}={name}", "use_backend"))
    _STACK.append(spec)
    try:
        yield
    finally:
        _STACK.remove(spec)


def forced(op: str):
    """The backend forced for ``op`` and where it was forced, or (None, None)."""
    for spec in reversed(_STACK):
        for key in (op, "*"):
            if key in spec:
                return spec[key], "use_backend"
    for key in (op, "*"):
        if key in _ENV:
            return _ENV[key], "FASTGPT_BACKEND"
    return None, None


def triton_why_not(t: torch.Tensor):
    """Why the Triton kernels cannot run on tensors like ``t`` (None when they can)."""
    if not TRITON_INSTALLED:
        return "triton is not installed"
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the Triton kernels take float32, float16 or bfloat16, got {t.dtype}"
    if t.device.type == "cuda":
        return None
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"Triton kernels need CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got a {t.device.type} tensor"


def choose(op: str, why_not, auto_order) -> str:
    """Pick the backend for one call.

    why_not(name) -> None if backend ``name`` can run this call, else the reason it cannot.
    auto_order: the backends ``auto`` tries, best first; ``reference`` always runs.
    """
    name, source = forced(op)
    if name is not None and name != "auto":
        reason = why_not(name)
        if reason is not None:
            raise BackendError(f"fastgpt.ops.{op}: backend {name!r} was forced ({source}) but cannot run this call: {reason}")
    else:
        name = next((b for b in auto_order if why_not(b) is None), "reference")
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug("fastgpt.ops.%s -> %s", op, name)
    return name


def report(device="cpu", dtype=torch.float32, **config) -> dict:
    """Which backend each op would use for a GPT on ``device``/``dtype``, and why.

    config: GPTConfig-like sizes (n_embd, n_head, block_size, batch) for the probe shapes.
    Returns {op: backend or 'error: ...'}.
    """
    C, H = config.get("n_embd", 768), config.get("n_head", 12)
    T, B = config.get("block_size", 64), config.get("batch", 2)
    kw = dict(device=device, dtype=dtype)
    x = torch.empty(B, T, C, **kw)
    q = torch.empty(B, H, T, C // H, **kw)
    calls = {
        "layer_norm": (x, torch.empty(C, **kw), torch.empty(C, **kw)),
        "bias_gelu": (torch.empty(B, T, 4 * C, **kw), torch.empty(4 * C, **kw)),
        "attention": (q, q, q),
        "qkv_projection": (x, torch.empty(3 * C, C, **kw), torch.empty(3 * C, **kw), H),
    }
    out = {}
    for op, args in calls.items():
        try:
            out[op] = backend_for(op, *args)
        except BackendError as e:
            out[op] = f"error: {e}"
    return out


def backend_for(op: str, *args, **kwargs) -> str:
    """The backend ``fastgpt.ops.<op>(*args, **kwargs)`` would run on (raises if a forced one can't)."""
    if op not in OPS:
        raise BackendError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    return importlib.import_module(f"fastgpt.ops.{op}").backend(*args, **kwargs)
