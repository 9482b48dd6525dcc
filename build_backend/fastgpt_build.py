"""PEP 517 backend: setuptools', building against the torch of the environment being installed into.

fastgpt._C links against libtorch, so it must be compiled with the very torch it will be
imported with. Under pip's default build isolation the build would see only the isolated
environment (no torch, or a freshly downloaded one of another version and ABI). This backend
puts the target environment's site-packages at the *end* of sys.path, so setuptools and ninja
still come from the isolated environment but torch comes from the user's. With
``--no-build-isolation`` it changes nothing.
"""
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (re-export the PEP 517 hooks)


def _expose_target_torch():
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in sys.path:
            sys.path.append(path)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"fastgpt: building fastgpt._C needs PyTorch installed in the target environment "
            f"({sys.prefix}), and none was found. Install it first, e.g. "
            f"'{sys.executable} -m pip install torch==2.14.1', then install fastgpt again."
        ) from None


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _expose_target_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _expose_target_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


