"""PEP 517 backend: setuptools', building against the torch of the environment being installed into.

fastgpt._C links against libtorch, so it must be compiled with the very torch it will be
imported with. Under pip's default build isolation the build would see only the isolated
environment (no torch, or a freshly downloaded one of another version and ABI). Importing this
backend appends the target environment's site-packages to the *end* of sys.path, so setuptools
and ninja still come from the isolated environment but torch comes from the user's; every hook
(metadata, requirements, wheel, editable) runs setup.py, which imports torch, so this happens
once, before any of them. With ``--no-build-isolation`` it changes nothing.
"""
import sys
import sysconfig

for _key in ("purelib", "platlib"):
    _path = sysconfig.get_paths()[_key]
    if _path not in sys.path:
        sys.path.append(_path)

try:
    import torch  # noqa: F401
except ImportError:
    raise SystemExit(
        f"fastgpt: building fastgpt._C needs PyTorch installed in the target environment "
        f"({sys.prefix}), and none was found. Install it first, e.g. "
        f"'{sys.executable} -m pip install torch==2.14.1', then install fastgpt again."
    ) from None

from setuptools.build_meta import *  # noqa: E402,F401,F403  (the PEP 517 hooks, unchanged)
