"""The package's shape: imports point down the layers, kernels install as fastgpt.kernels."""
import os
import subprocess
import sys

from helpers import ROOT


def test_imports_point_down_and_form_no_cycle():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "import_graph.py"), "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no cycle, every arrow points down" in out.stdout


def test_a_violation_is_reported(tmp_path):
    """The checker itself: an upward import in a copy of the tree fails it."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import import_graph
    finally:
        sys.path.pop(0)
    mods = import_graph.modules()
    graph = import_graph.edges(mods) + [("fastgpt.ops.attention", "fastgpt.model", "eager", 1),
                                        ("fastgpt.model", "fastgpt.train", "deferred", 2)]
    problems = import_graph.check(mods, graph)
    assert any("fastgpt.ops.attention:1 -> fastgpt.model (eager) points up" in p for p in problems), problems
    assert any("fastgpt.model:2 -> fastgpt.train (deferred) points up" in p for p in problems), problems
    assert any(p.startswith("import cycle") for p in problems), problems  # model -> ops -> ... -> model


def test_kernels_are_installed_inside_the_package():
    """kernels/ is fastgpt.kernels (no symlink, no top-level 'kernels' module)."""
    code = ("import importlib.util, os, fastgpt.kernels.limits as L; "
            "print(os.path.dirname(L.__file__)); print(importlib.util.find_spec('kernels'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    folder, top_level = out.stdout.split()
    assert os.path.realpath(folder) == os.path.realpath(os.path.join(ROOT, "kernels"))
    assert top_level == "None"
    assert not os.path.lexists(os.path.join(ROOT, "fastgpt", "kernels"))
