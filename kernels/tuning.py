"""Tuned launch configs: the tables a GPU sweep (``scripts/tune.py``) measured, read without triton.

A table is one JSON file per device in ``kernels/tuned/`` (shipped as package data), named by
``table_name(device name, compute capability)``, e.g. ``sm90-nvidia-h200.json``::

    {"schema": 1,
     "device": {"name": "NVIDIA H200", "capability": [9, 0]},
     "provenance": {...},                      # date, driver, versions, command (not read here)
     "kernels": {
       "attention.fwd": {"source": "<sha256 of kernels/attention.py>",
                         "entries": {"<key_string(...)>": {"config": {"BLOCK_M": 128, ...}, ...}}},
       ...},
     "backends": {                              # optional: which backend ``auto`` runs an op on
       "mlp": {"source": "<fastgpt._C.sources_sha256() of the build measured>",
               "entries": {"<key_string(...)>": {"backend": "cuda", ...}}},
       ...}}

A launcher asks ``pick(kernel, device, key, candidates)``: with its candidates for the call
(today's ordered list, after its own fit filter), it gets the candidate the table names for
``key``, or the first candidate when the table has no such entry, has no table for this device,
or the table cannot be trusted. The choice is a pure function of the table file and the call,
so the same table gives the same config and bit-identical gradients in every process.

A table is not trusted, with one ``TunedTableWarning`` per file and reason, when it is
malformed (bad JSON, another schema, wrong field types, another device than its name says),
when a kernel family's recorded source hash differs from its module today (the kernels changed
since the sweep: run it again), or when an entry names a config that is not among the
launcher's candidates. Nothing here raises on a bad table.

``backend_choice(op, device, key, source)``: for the ops whose ``cuda`` backend is a CUTLASS GEMM
(``auto`` picks it only where a GPU measured it faster), the backend the table names for ``key``,
or None: no entry, or one measured on another build of ``fastgpt._C`` (``source`` differs).

``FASTGPT_TUNED_DIR`` points the lookup at another folder (the GPU check uses the table it has
just measured); ``FASTGPT_TUNED=0`` ignores every table. Tables, and the launchers' choices
(``cached``), are read once per process: ``clear_cache()`` makes them read again.
"""
import functools
import hashlib
import json
import os
import re
import warnings

SCHEMA = 1
BACKENDS = ("reference", "triton", "cuda")
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")
CONFIG_FIELDS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


class TunedTableWarning(UserWarning):
    """A tuning table was ignored (malformed or stale); the launchers use their default configs."""


def table_name(device_name: str, capability) -> str:
    """The file name of the table for a device, e.g. ``sm90-nvidia-h200.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"
    return f"sm{capability[0]}{capability[1]}-{slug}.json"


def bucket(n: int) -> int:
    """The power of two >= n (>= 1) that sizes share a table entry by."""
    return 1 << max(0, int(n) - 1).bit_length()


def key_string(key: dict) -> str:
    """A table key: ``name=value`` pairs sorted by name; bools as 0/1, dtypes by short name."""
    def fmt(v):
        if isinstance(v, bool):
            return str(int(v))
        return str(v).removeprefix("torch.")
    return ",".join(f"{k}={fmt(key[k])}" for k in sorted(key))


def source_hash(family: str) -> str:
    """sha256 of the kernel module ``kernels/<family>.py`` as it is now (line endings normalised)."""
    return _source_hash(family)


@functools.lru_cache(maxsize=None)
def _source_hash(family):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{family}.py")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read().replace(b"\r\n", b"\n")).hexdigest()


_warned = set()


def _warn(path, reason):
    if (path, reason) not in _warned:
        _warned.add((path, reason))
        warnings.warn(f"fastgpt: ignoring tuning table {path}: {reason}; using the default configs",
                      TunedTableWarning, stacklevel=4)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate(table) -> str | None:
    """Why ``table`` (parsed JSON) is malformed, or None when it has the expected shape."""
    if not isinstance(table, dict):
        return "the top level is not an object"
    if table.get("schema") != SCHEMA:
        return f"schema {table.get('schema')!r}, expected {SCHEMA}"
    device = table.get("device")
    if not (isinstance(device, dict) and isinstance(device.get("name"), str)
            and isinstance(device.get("capability"), list) and len(device["capability"]) == 2
            and all(_is_int(c) for c in device["capability"])):
        return "'device' must hold a 'name' string and a 'capability' [major, minor]"
    kernels = table.get("kernels")
    if not isinstance(kernels, dict):
        return "'kernels' is not an object"
    for name, family in kernels.items():
        if not (isinstance(family, dict) and isinstance(family.get("source"), str)
                and isinstance(family.get("entries"), dict)):
            return f"kernel {name!r} must hold a 'source' hash and an 'entries' object"
        for key, entry in family["entries"].items():
            config = entry.get("config") if isinstance(entry, dict) else None
            if not (isinstance(config, dict) and config and all(isinstance(k, str) and _is_int(v) for k, v in config.items())):
                return f"{name} entry {key!r} has no 'config' of integer fields"
    backends = table.get("backends", {})
    if not isinstance(backends, dict):
        return "'backends' is not an object"
    for op, choices in backends.items():
        if not (isinstance(choices, dict) and isinstance(choices.get("source"), str)
                and isinstance(choices.get("entries"), dict)):
            return f"backends of {op!r} must hold a 'source' hash and an 'entries' object"
        for key, entry in choices["entries"].items():
            if not (isinstance(entry, dict) and entry.get("backend") in BACKENDS):
                return f"backends of {op} entry {key!r} has no 'backend' among {BACKENDS}"
    return None


@functools.lru_cache(maxsize=None)
def _load(path, device_name, capability):
    """The validated table at ``path``, or None with one warning."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        _warn(path, f"cannot read it as JSON ({e})")
        return None
    problem = validate(table)
    if problem is None and (table["device"]["name"] != device_name or tuple(table["device"]["capability"]) != capability):
        problem = (f"it was measured on {table['device']['name']} (sm_{''.join(map(str, table['device']['capability']))}), "
                   f"not on this {device_name}")
    if problem is not None:
        _warn(path, f"malformed: {problem}")
        return None
    return table


def tables_dir() -> str:
    return os.environ.get("FASTGPT_TUNED_DIR") or PACKAGE_DIR


def load_table(device_name: str, capability):
    """The table for this device, or None (no file, tables switched off, or not trusted)."""
    if os.environ.get("FASTGPT_TUNED", "1") == "0":
        return None
    capability = tuple(int(c) for c in capability)
    path = os.path.join(tables_dir(), table_name(device_name, capability))
    if not os.path.exists(path):
        return None
    return _load(path, device_name, capability)


def lookup(kernel: str, device_name: str, capability, key: dict):
    """The tuned config (a dict) of ``kernel`` (e.g. "attention.fwd") for ``key``, or None."""
    table = load_table(device_name, capability)
    if table is None:
        return None
    family = table["kernels"].get(kernel)
    if family is None:
        return None
    path = os.path.join(tables_dir(), table_name(device_name, capability))
    if family["source"] != source_hash(kernel.split(".")[0]):
        _warn(path, f"{kernel} was tuned for another version of kernels/{kernel.split('.')[0]}.py "
                    f"(source hash differs): run scripts/tune.py again")
        return None
    entry = family["entries"].get(key_string(key))
    return None if entry is None else entry["config"]


def csrc_sha256(csrc_dir: str) -> str:
    """sha256 over the files of a csrc/ folder (names and contents, line endings normalised): what
    setup.py compiles into fastgpt._C.sources_sha256(), and scripts/harvest.py checks a table's
    backend choices against."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(csrc_dir)):
        path = os.path.join(csrc_dir, name)
        if os.path.isfile(path):
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def _backend_choice(op, name, capability, key_str, source):
    table = load_table(name, capability)
    choices = None if table is None else table.get("backends", {}).get(op)
    if choices is None:
        return None
    if choices["source"] != source:
        _warn(os.path.join(tables_dir(), table_name(name, capability)),
              f"the backend choices for {op} were measured on another build of fastgpt._C (csrc/ differs): "
              f"run scripts/tune.py again")
        return None
    entry = choices["entries"].get(key_str)
    return None if entry is None else entry["backend"]


def backend_choice(op: str, device, key: dict, source: str):
    """The backend the table says ``auto`` should run ``op`` on for ``key``, or None.

    device: a CUDA ``torch.device`` or a ``(name, capability)`` pair; source: the running
    ``fastgpt._C.sources_sha256()`` (entries measured on another build are not used). Memoised.
    """
    name, capability = device if isinstance(device, tuple) else device_identity(device.index)
    return _backend_choice(op, name, tuple(int(c) for c in capability), key_string(key), source)


@functools.lru_cache(maxsize=None)
def device_identity(index: int):
    """(name, (major, minor)) of CUDA device ``index``."""
    import torch

    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))


def pick(kernel: str, device, key: dict, candidates, as_dict=dict):
    """The launch config for one call: the tuned one when the table has it, else ``candidates[0]``.

    device: a CUDA ``torch.device`` (with an index) or a ``(name, capability)`` pair.
    candidates: the launcher's ordered candidates for this call (after its own fit checks);
    ``as_dict(c)`` gives a candidate's fields as the table records them. A tuned config that
    is not among the candidates (the lists changed since the sweep) is not used.
    """
    name, capability = device if isinstance(device, tuple) else device_identity(device.index)
    tuned = lookup(kernel, name, capability, key)
    if tuned is not None:
        for c in candidates:
            if as_dict(c) == tuned:
                return c
        _warn(os.path.join(tables_dir(), table_name(name, capability)),
              f"{kernel} {key_string(key)}: the tuned config {tuned} is not among today's candidates")
    return candidates[0]


_choices = []


def cached(choose):
    """A launcher's config choice, memoised (it runs on every kernel call; its arguments must
    be hashable and determine the choice), and forgotten by ``clear_cache``."""
    memo = functools.lru_cache(maxsize=4096)(choose)
    _choices.append(memo)
    return memo


def clear_cache():
    """Forget loaded tables, source hashes, the launchers' choices and the warnings given
    (tests; a table rewritten in place)."""
    _load.cache_clear()
    _source_hash.cache_clear()
    _backend_choice.cache_clear()
    for memo in _choices:
        memo.cache_clear()
    _warned.clear()
