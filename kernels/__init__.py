"""Triton kernels and their host launchers, installed as ``fastgpt.kernels``.

Only ``@triton.jit`` kernels and the functions that launch them live here: no autograd,
no dispatch, no model code (see ``fastgpt.ops`` for those). Importing this package does
not import triton; import the submodule of the op you need.
"""
