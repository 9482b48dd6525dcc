"""What the kernels accept, in one place that does not import triton.

The launchers in this package enforce these limits; ``fastgpt.ops`` reads them to decide,
without importing triton, whether a kernel backend can run a call; the ahead-of-time tests
compile against them.
"""
import torch

# Element types of every Triton kernel (fp32 runs IEEE fp32 arithmetic, no TF32).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Attention: head dims with a tile config, and the grid's second axis (one program per (b, h)).
ATTENTION_HEAD_DIMS = (16, 32, 64, 128)
ATTENTION_MAX_BATCH_HEADS = 65535

# LayerNorm keeps a whole row on-chip (registers); wider rows spill (tests/test_aot_norms.py).
LAYER_NORM_MAX_N = 8192

# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) by compute
# capability, for when the driver cannot be asked (and for compiling ahead of time).
SHARED_MEMORY_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
