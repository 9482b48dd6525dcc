"""The build's metadata-only paths: they must not import torch (nor look for nvcc), so that
pip can ask for fastgpt's metadata and build requirements in any environment."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails


def _run(code, *args):
    out = subprocess.run([sys.executable, "-c", NO_TORCH + code, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_egg_info_does_not_import_torch(tmp_path):
    _run("import runpy; sys.argv = ['setup.py', 'egg_info', '--egg-base', sys.argv[1]]\n"
         "runpy.run_path('setup.py', run_name='__main__')", str(tmp_path))


def test_pep517_requirement_hooks_do_not_import_torch():
    _run("sys.path.insert(0, 'build_backend')\nimport fastgpt_build as b\n"
         "assert isinstance(b.get_requires_for_build_wheel(), list)\n"
         "assert isinstance(b.get_requires_for_build_editable(), list)")
