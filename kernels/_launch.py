"""Host-side helpers shared by the kernel launchers."""
import contextlib
import functools

import torch


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make that ``t``'s (a no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a few for the CPU interpreter, which runs
    programs one after another."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
