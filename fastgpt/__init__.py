"""fastgpt: a nanoGPT-compatible GPT whose hot paths run on Triton and CUDA kernels.

    from fastgpt import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768))   # nanoGPT's fields and defaults

Importing fastgpt queries no GPU and compiles nothing; kernels compile on first use.
"""
from fastgpt import ops, reference
from fastgpt.backends import BackendError, backend_for, report, use_backend
from fastgpt.checkpoint import clean_state_dict
from fastgpt.model import GPT, GPTConfig
from fastgpt.presets import PRESETS

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "PRESETS", "BackendError", "backend_for", "clean_state_dict", "ops", "reference", "report", "use_backend"]
