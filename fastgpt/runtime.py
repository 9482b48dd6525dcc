"""Where and how a run computes: the device, dtype and autocast, the processes of a distributed
run, the CPU threads, and Ctrl-C. Shared by training and sampling."""
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from fastgpt.hardware import peak_flops


class TrainError(RuntimeError):
    """A run that cannot start or go on (bad device, NaN loss, ...). The message names the fix."""


def resolve_device(name, local_rank=None):
    """'auto', 'cpu', 'cuda', 'cuda:N' -> a torch.device that exists here, or TrainError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown device {name!r}; use --device cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise TrainError(f"device {name!r} is not supported; use --device cpu or cuda")
    if not torch.cuda.is_available():
        raise TrainError(f"device {name!r} does not exist: this machine has no usable CUDA GPU; use --device cpu")
    if local_rank is not None:
        device = torch.device("cuda", local_rank)
    index = device.index if device.index is not None else 0
    if index >= torch.cuda.device_count():
        raise TrainError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of those")
    return torch.device("cuda", index)


def resolve_dtype(name, device):
    """'auto' (bfloat16 on a GPU that has it, float16 on older GPUs, float32 on the CPU) or a name."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = getattr(torch, name)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("this GPU has no bfloat16; use --dtype float16 or float32")
    return dtype


def autocast(device, dtype):
    """Mixed precision for 16-bit dtypes (weights stay fp32), nothing for fp32."""
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def cpu_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class ThreadTuner:
    """CPU threads for ``threads=0``: measured, not guessed. On cores shared with other work,
    extra OpenMP threads spin-wait on busy cores and can make a step many times slower, so the
    best count changes with the machine's load. A tuning pass times ``window`` iterations with
    each candidate (one thread first, then half, then all the cores; a candidate whose first
    iteration is clearly slower than one thread is dropped at once) and keeps the fastest. It
    runs at the start, every ``every`` iterations, and as soon as iterations get twice as slow
    as measured. Thread counts change float summation order, not the maths."""

    def __init__(self, cores, every=250, window=3, skip=2):
        self.candidates = sorted({cores, max(1, cores // 2), 1})
        self.every, self.window = every, window
        self.best = 1  # until measured: one thread is never the disaster an oversubscribed pool can be
        self.next_tune = skip  # the iteration (counted from this run's start) that starts the next pass
        self.times, self.queue, self.expected, self.slow = {}, [], None, 0

    def threads_for(self, k):
        """The thread count for the k-th iteration of this run."""
        if len(self.candidates) > 1 and k == self.next_tune and not self.queue:
            self.times = {}
            self.queue = [c for c in self.candidates for _ in range(self.window)]
        return self.queue[0] if self.queue else self.best

    def record(self, k, threads, dt):
        if not self.queue:
            if self.expected is not None:  # the machine got busier: measure again now
                self.slow = self.slow + 1 if dt > 2 * self.expected else 0
                if self.slow >= 3:
                    self.next_tune, self.slow = k + 1, 0
            return
        self.queue.pop(0)
        self.times.setdefault(threads, []).append(dt)
        one = self.times.get(1)
        if threads != 1 and one and dt > 1.5 * max(one):  # hopeless: skip its other iterations
            self.queue = [c for c in self.queue if c != threads]
        if not self.queue:
            med = {t: sorted(v)[len(v) // 2] for t, v in self.times.items()}
            self.best = min(med, key=med.get)
            self.expected = med[self.best]
            self.next_tune = k + 1 + self.every


def keep_freed_memory():
    """Tell glibc's malloc to keep freed blocks in the heap (Linux only; no-op elsewhere).

    A CPU step frees and re-allocates the same activation buffers every iteration; blocks over
    glibc's mmap threshold go back to the OS on free and come back as fresh zeroed pages, a
    page fault per 4 KiB every step. With the thresholds raised the faults all but vanish
    (tests/test_runtime.py counts them). Returns whether the setting took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        # 32 MiB is glibc's documented ceiling for the mmap threshold on 64-bit systems
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


@dataclass
class Distributed:
    """This process's place in a torchrun job (one process when not under torchrun)."""

    enabled: bool = False
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    local_world: int = 1

    @classmethod
    def from_env(cls):
        if int(os.environ.get("RANK", -1)) == -1:
            return cls()
        world = int(os.environ["WORLD_SIZE"])
        return cls(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world,
                   int(os.environ.get("LOCAL_WORLD_SIZE", world)))

    @property
    def master(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


@dataclass
class Runtime:
    """A run's device, dtype, autocast context, processes and CPU threads (see :meth:`start`)."""

    device: torch.device
    dtype: torch.dtype
    dist: Distributed
    threads: int = 1
    tuner: Optional[ThreadTuner] = None
    autocast: contextlib.AbstractContextManager = field(default=None)

    @classmethod
    def start(cls, device, dtype, dist, threads=0, tune_every=250):
        """Resolve the device and dtype, join the process group, set up the CPU threads
        (``threads``, or 0: tuned by measurement every ``tune_every`` iterations)."""
        device = resolve_device(device, dist.local_rank if dist.enabled else None)
        dtype = resolve_dtype(dtype, device)
        if dist.enabled:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rt = cls(device, dtype, dist, autocast=autocast(device, dtype))
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            keep_freed_memory()
            if threads:
                torch.set_num_threads(threads)
            else:
                rt.tuner = ThreadTuner(max(1, cpu_cores() // dist.local_world), every=tune_every)
                torch.set_num_threads(rt.tuner.best)
            rt.threads = rt.tuner.best if rt.tuner else torch.get_num_threads()
        return rt

    def close(self, finished=False):
        """Ends the process group. ``finished``: the run ended normally on this process, so every
        process reaches this point: they wait for each other first (the first process samples and
        plots after the others are done), and none tears gloo down while a peer still talks to it.
        Not after an error: a peer that never comes would hang the barrier."""
        if self.dist.enabled and torch.distributed.is_initialized():
            if finished:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def say(self, *args, **kwargs):
        if self.dist.master:
            print(*args, **kwargs)

    @property
    def cores(self):
        """The CPU cores this process has: the tuner's whole range (its largest candidate), or the
        thread count it was given. The tuner may run fewer threads at times; the cores are still its."""
        return max(self.tuner.candidates) if self.tuner else self.threads

    @property
    def peak_flops(self):
        """MFU's denominator: the GPU's bf16 peak, or every CPU core this process has (see cores),
        so the same throughput gives the same MFU whatever thread count the tuner runs."""
        if self.device.type == "cuda":
            return peak_flops(torch.cuda.get_device_name(self.device))
        return peak_flops("cpu", self.cores)

    def describe(self):
        cpu = (f", CPU threads tuned among {self.tuner.candidates}" if self.tuner else f", {self.threads} CPU thread(s)") \
            if self.device.type == "cpu" else ""
        procs = f" x {self.dist.world} processes" if self.dist.enabled else ""
        return f"device {self.device}{procs}, {str(self.dtype).replace('torch.', '')}{cpu}"

    @contextlib.contextmanager
    def timed_step(self, k):
        """Time the k-th iteration of this run (its CPU thread count chosen by the tuner)."""
        threads = self.tuner.threads_for(k) if self.tuner else None
        if threads and threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        timer = _Timer()
        yield timer
        timer.dt = time.time() - timer.t0
        if self.tuner:
            self.tuner.record(k, threads, timer.dt)

    def rng_state(self):
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def set_rng_state(self, state):
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)


class _Timer:
    def __init__(self):
        self.t0, self.dt = time.time(), None


@contextlib.contextmanager
def quiet_exits():
    """How a command line ends when its user stops it: Ctrl-C exits with 130 and a closed output
    pipe (``| head``) with 1, without a traceback."""
    try:
        yield
        sys.stdout.flush()  # a closed pipe shows here, not later at interpreter exit
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # so the exit-time flush of stdout stays quiet too
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None


class Interrupt:
    """First Ctrl-C (or SIGTERM): finish the iteration, save, stop. Second Ctrl-C: stop now."""

    def __init__(self, say):
        self.requested = False
        self.say = say
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.say("interrupted: saving a checkpoint after this iteration (Ctrl-C again to quit without saving)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
