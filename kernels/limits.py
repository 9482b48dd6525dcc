"""What the kernels accept, in one place that does not import triton.

The launchers in this package enforce these limits; ``fastgpt.ops`` reads them to decide,
without importing triton, whether a kernel backend can run a call; the ahead-of-time tests
compile against them.
"""
import os

import torch

# Element types of every Triton kernel (fp32 runs IEEE fp32 arithmetic, no TF32).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Element types whose tl.dot the Triton interpreter (TRITON_INTERPRET=1, CPU tensors) computes
# correctly: its bfloat16 dots return garbage (values around 1e8; triton-lang/triton#11584).
# Kernels without dots (LayerNorm, bias+GELU) are right in bfloat16 there.
INTERPRETER_DOT_DTYPES = (torch.float32, torch.float16)


def interpreter_dot_why_not(t: torch.Tensor):
    """Why a kernel that does ``tl.dot`` cannot run on tensors like ``t`` (None when it can):
    bfloat16 under the interpreter."""
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and t.dtype not in INTERPRETER_DOT_DTYPES:
        return (f"the Triton interpreter (TRITON_INTERPRET=1) computes {str(t.dtype).replace('torch.', '')} dots wrongly "
                f"(triton-lang/triton#11584); use float32 or float16 there, or a GPU")
    return None


# Attention: head dims with a tile config; batch and heads ride grid axes 2 and 1 (<= 65535
# each). ATTENTION_MAX_BATCH_HEADS is the older, stricter bound on B * n_head that
# fastgpt.ops still checks; the kernels accept any B * n_head < 2**31 within the two above.
ATTENTION_HEAD_DIMS = (16, 32, 64, 128)
ATTENTION_MAX_BATCH = 65535
ATTENTION_MAX_HEADS = 65535
ATTENTION_MAX_BATCH_HEADS = 65535

# LayerNorm keeps a whole row on-chip (registers); wider rows spill (tests/test_aot_norms.py).
LAYER_NORM_MAX_N = 8192

# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) by compute
# capability, for when the driver cannot be asked (and for compiling ahead of time).
SHARED_MEMORY_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
