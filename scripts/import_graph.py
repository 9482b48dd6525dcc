#!/usr/bin/env python3
"""Print fastgpt's module import edges and check that they only point down the layers.

    python scripts/import_graph.py            # every edge, then the verdict (exit 1 on a violation)
    python scripts/import_graph.py --quiet    # the verdict only

Reads the source with ``ast`` (nothing is imported). An edge is *eager* when the import runs as
the module loads, *deferred* when it sits inside a function. The layers, top to bottom:

    commands      train, sample, describe, hf
    run           checkpoint, config, data, runtime, runlog
    model         model
    ops           ops, ops.*
    kernels       backends, reference, kernels.*
    leaves        _io, presets, hardware, sources, kernels.limits, kernels.tuning, _C

Rules: eager edges go to the same or a lower layer and form no cycle; deferred edges go down
too, except the ones listed in ALLOWED_DEFERRED_UP (nanoGPT's ``GPT.from_pretrained`` and
``load_nanogpt_state_dict`` reach the formats above the model when called). The package's
``__init__`` may import anything; nothing may import the package itself.
"""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"fastgpt": os.path.join(ROOT, "fastgpt"), "fastgpt.kernels": os.path.join(ROOT, "kernels")}
LAYERS = [
    ("commands", ["fastgpt.train", "fastgpt.sample", "fastgpt.describe", "fastgpt.hf"]),
    ("run", ["fastgpt.checkpoint", "fastgpt.config", "fastgpt.data", "fastgpt.runtime", "fastgpt.runlog"]),
    ("model", ["fastgpt.model"]),
    ("ops", ["fastgpt.ops"]),
    ("kernels", ["fastgpt.backends", "fastgpt.reference", "fastgpt.kernels"]),
    ("leaves", ["fastgpt._io", "fastgpt.presets", "fastgpt.hardware", "fastgpt.sources", "fastgpt.kernels.limits",
                "fastgpt.kernels.tuning", "fastgpt._C"]),
]
ALLOWED_DEFERRED_UP = {("fastgpt.model", "fastgpt.hf"), ("fastgpt.model", "fastgpt.checkpoint")}


def modules():
    """{module name: path} for every .py file of the package (kernels/ as fastgpt.kernels)."""
    out = {}
    for package, folder in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not (package == "fastgpt" and d == "kernels")]
            rel = os.path.relpath(dirpath, folder)
            prefix = package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"
            for f in filenames:
                if f.endswith(".py"):
                    out[prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"] = os.path.join(dirpath, f)
    return out


def layer(module):
    """The layer index of a module: its most specific entry in LAYERS."""
    best = None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    return None if best is None else best[0]


def edges(mods):
    """[(src, dst, 'eager'|'deferred', line)] for imports of fastgpt modules."""
    out = []
    for src, path in sorted(mods.items()):
        tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
        package = src if path.endswith("__init__.py") else src.rpartition(".")[0]

        def visit(node, deferred, src=src, package=package):
            for child in ast.iter_child_nodes(node):
                inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods or f"{base}.{a.name}" == "fastgpt._C" else base
                               for a in child.names]
                for t in targets:
                    if t == "fastgpt" or t.startswith("fastgpt."):
                        out.append((src, t, "deferred" if deferred else "eager", child.lineno))
                visit(child, inner)

        visit(tree, False)
    return sorted(set(out))


def check(mods, graph):
    problems = []
    for src, dst, kind, line in graph:
        if dst == "fastgpt" and src != "fastgpt":
            problems.append(f"{src}:{line} imports the package fastgpt itself; import the module that defines the name")
            continue
        if src == "fastgpt" or dst == src:
            continue
        ls, ld = layer(src), layer(dst)
        if ls is None or ld is None:
            problems.append(f"{src} -> {dst}: module missing from LAYERS in scripts/import_graph.py")
        elif ld < ls and not (kind == "deferred" and (src, dst) in ALLOWED_DEFERRED_UP):
            problems.append(f"{src}:{line} -> {dst} ({kind}) points up: layer {LAYERS[ls][0]} imports layer {LAYERS[ld][0]}")
    eager = {}
    for src, dst, kind, _ in graph:
        if kind == "eager" and src != "fastgpt" and dst != src:
            eager.setdefault(src, set()).add(dst)
    state = {}

    def dfs(node, stack):
        state[node] = "open"
        for nxt in sorted(eager.get(node, ())):
            if state.get(nxt) == "open":
                problems.append("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(eager):
        if node not in state:
            dfs(node, [node])
    return problems


def main(argv):
    mods = modules()
    graph = edges(mods)
    if "--quiet" not in argv:
        shown = set()
        for src, dst, kind, line in graph:
            if (src, dst, kind) not in shown:
                shown.add((src, dst, kind))
                print(f"{src} -> {dst}" + ("" if kind == "eager" else f"  (deferred, line {line})"))
    problems = check(mods, graph)
    for p in problems:
        print(f"VIOLATION: {p}", file=sys.stderr)
    n_edges = len({(src, dst) for src, dst, _, _ in graph})
    print(f"{n_edges} import edges among {len(mods)} modules: {'no cycle, every arrow points down' if not problems else f'{len(problems)} violation(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
