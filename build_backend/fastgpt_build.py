"""PEP 517 backend: setuptools', building against the torch of the environment being installed into.

fastgpt._C links against libtorch, so it must be compiled with the very torch it will be
imported with. Under pip's default build isolation the build would see only the isolated
environment (no torch, or a freshly downloaded one of another version and ABI). Importing this
backend appends the target environment's site-packages (and the paths its .pth files name) to
the *end* of sys.path, so setuptools and ninja still come from the isolated environment but
torch (and the CUTLASS headers of the nvidia-cutlass package) come from the user's. Only the
hooks that compile need torch, so only they check for it: metadata and requirements hooks never
import it. With ``--no-build-isolation`` the path change is a no-op.
"""
import importlib.util
import site
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 hooks, two wrapped below)

for _key in ("purelib", "platlib"):
    _path = sysconfig.get_paths()[_key]
    if _path not in sys.path:
        site.addsitedir(_path)  # appends, and follows the environment's .pth files


def _require_torch():
    if importlib.util.find_spec("torch") is None:
        raise SystemExit(
            f"fastgpt: building fastgpt._C needs PyTorch installed in the target environment "
            f"({sys.prefix}), and none was found. Install it first, e.g. "
            f"'{sys.executable} -m pip install torch==2.14.1', then install fastgpt again."
        )


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _require_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _require_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
