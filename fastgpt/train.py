"""Train a GPT: nanoGPT's train.py loop, on one CPU, one GPU or many (torchrun, DDP).

    python -m fastgpt.train                                   # the default preset for this machine
    python -m fastgpt.train --preset shakespeare-char --max_iters 3000
    python -m fastgpt.train configs/my_run.toml --data my.txt --batch_size 32
    python -m fastgpt.train --out_dir out/run1 --resume       # continue exactly where it stopped
    torchrun --standalone --nproc_per_node 8 -m fastgpt.train --preset gpt2 --data corpus.txt

Settings: a preset, a config file and ``--key value`` overrides (see ``fastgpt.config``; an
unknown key lists the valid ones). Writes to out_dir: ckpt.pt (atomically), log.csv (every
iteration), eval.csv, summary.json and loss.png. Ctrl-C saves a checkpoint and stops; a NaN/inf
loss stops the run and keeps the last good checkpoint. ``--resume`` restores the model,
optimizer, grad scaler, iteration and RNG states, so the resumed losses equal an uninterrupted
run's. Under torchrun, gradient_accumulation_steps (the global total) is split over the ranks
and every iteration's global batch is the same as the single-process run's.
"""
import contextlib
import csv
import json
import math
import os
import signal
import sys
import time

import torch

from fastgpt import checkpoint
from fastgpt.backends import report
from fastgpt.checkpoint import CheckpointError
from fastgpt.config import MODEL_KEYS, ConfigError, as_dict, build, default_preset, from_dict
from fastgpt.data import DataError, batch_from, prepare
from fastgpt.model import GPT, GPTConfig

LOG_FIELDS = ["iter", "loss", "lr", "ms", "tokens_per_s", "mfu"]
EVAL_FIELDS = ["iter", "train_loss", "val_loss", "lr", "elapsed_s"]
# Dense bf16 peak per GPU for MFU (nanoGPT's A100 figure, and the H100/H200 SXM datasheets).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class TrainError(RuntimeError):
    """A run that cannot start or go on (bad device, NaN loss, ...). The message names the fix."""


# ---------------------------------------------------------------------------------------------
# set-up


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
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


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
    glibc's mmap threshold (128 KiB to 32 MiB, adaptive) go back to the OS on free and come back
    as fresh zeroed pages, ~1,000 page faults per step of the small Shakespeare preset. With
    the thresholds raised the faults drop to ~0 (measured with getrusage) and the kernel's
    system time per step from ~6 ms to ~3 ms. Returns whether the setting took effect."""
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


def peak_flops(device, threads):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), 312e12)
    return threads * 1e11  # ~ an AVX2 core's fp32 FMA peak (2 x 8-wide FMA at ~3 GHz)


def lr_at(it, cfg):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, then min_lr (nanoGPT)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(1.0, ratio)))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def batch_starts(seed, it, n_tokens, count, block_size):
    """The start offsets of iteration ``it``'s global batch: a function of (seed, it) only, so a
    resumed run and every rank of a distributed run draw exactly the same windows."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + it)
    return torch.randint(n_tokens - block_size, (count,), generator=g).tolist()


def eval_starts(seed, split, k, n_tokens, count, block_size):
    """Fixed evaluation batches (the same at every evaluation), apart from the training stream."""
    g = torch.Generator().manual_seed(seed * 7_919 + k * 104_729 + (1 if split == "val" else 0) + 17)
    return torch.randint(n_tokens - block_size, (count,), generator=g).tolist()


@torch.no_grad()
def evaluate(model, data, cfg, device, ctx):
    model.eval()
    out = {}
    for split in ("train", "val"):
        arr = data.split(split)
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = batch_from(arr, eval_starts(cfg.seed, split, k, len(arr), cfg.batch_size, cfg.block_size), cfg.block_size, device)
            with ctx:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


# ---------------------------------------------------------------------------------------------
# logs


def _rewrite_csv(path, fields, keep_below=None):
    """Start a CSV (fresh), or keep only the rows before iteration ``keep_below`` (resume)."""
    rows = []
    if keep_below is not None and os.path.isfile(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("iter", "").isdigit() and int(r["iter"]) < keep_below]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _append_csv(path, fields, row):
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(out_dir):
    """loss.png from log.csv and eval.csv (skipped, with a note, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss.png (pip install matplotlib)"
    train = read_log(os.path.join(out_dir, "log.csv"))
    evals = read_log(os.path.join(out_dir, "eval.csv"))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([int(r["iter"]) for r in train], [float(r["loss"]) for r in train], lw=0.6, alpha=0.6, label="train (per iteration)")
    if evals:
        its = [int(r["iter"]) for r in evals]
        ax.plot(its, [float(r["train_loss"]) for r in evals], "o-", label="train (eval)")
        ax.plot(its, [float(r["val_loss"]) for r in evals], "o-", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=120)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------
# the run


class _Interrupt:
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


def _setup_distributed():
    """(ddp, rank, local_rank, world_size) from torchrun's environment."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1
    return True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])


def train(argv=None):
    """Run training from command-line style arguments; returns a summary dict (rank 0)."""
    cfg, explicit, preset, flags = build(sys.argv[1:] if argv is None else argv)
    resume, overwrite = flags.get("resume", False), flags.get("overwrite", False)
    ddp, rank, local_rank, world = _setup_distributed()
    master = rank == 0
    say = print if master else (lambda *a, **k: None)

    # device first: a device that does not exist fails before anything touches the disk
    device = resolve_device(cfg.device, local_rank if ddp else None)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    resume = resume or (cfg.eval_only and os.path.isfile(ckpt_path))  # eval_only evaluates the run's checkpoint
    if resume:
        if not os.path.isfile(ckpt_path):
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start, or pass the run's --out_dir")
        ckpt = checkpoint.load(ckpt_path, map_location="cpu")
        saved = from_dict(ckpt.get("config", {}))
        model_wanted = {k: getattr(cfg, k) for k in MODEL_KEYS if k in explicit}
        checkpoint.check_model_args(ckpt, model_wanted, ckpt_path, hint="resume without those settings, or start a new run in another --out_dir")
        for key in ("data", "tokenizer"):
            if key in explicit and getattr(cfg, key) != getattr(saved, key):
                raise CheckpointError(f"checkpoint {ckpt_path} was trained on {key}={getattr(saved, key)!r}, not "
                                      f"{getattr(cfg, key)!r}; resume without --{key}, or start a new run in another --out_dir")
        cfg = from_dict({**as_dict(saved), **{k: v for k, v in explicit.items()}, "out_dir": cfg.out_dir}).validate()
    elif os.path.exists(ckpt_path) and not overwrite and not cfg.eval_only:
        raise TrainError(f"{ckpt_path} already exists; pass --resume to continue that run, --overwrite to replace it, "
                         f"or choose another --out_dir")
    device = resolve_device(cfg.device, local_rank if ddp else None)
    ptdtype = resolve_dtype(cfg.dtype, device)
    if ptdtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("this GPU has no bfloat16; use --dtype float16 or float32")

    if ddp:
        if cfg.gradient_accumulation_steps % world:
            raise ConfigError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of the "
                              f"number of processes ({world}); set --gradient_accumulation_steps to a multiple of {world}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(cfg, preset, ckpt, device, ptdtype, ddp, rank, world, master, say)
    finally:
        if ddp and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(cfg, preset, ckpt, device, ptdtype, ddp, rank, world, master, say):
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    tuner = None
    if device.type == "cpu":
        keep_freed_memory()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        else:
            tuner = ThreadTuner(max(1, cpu_cores() // local_world), every=cfg.eval_interval)
            torch.set_num_threads(tuner.best)
    threads = tuner.candidates[0] if tuner else torch.get_num_threads()
    local_accum = cfg.gradient_accumulation_steps // world
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size

    # data: rank 0 tokenizes (once, cached), the others then read its files
    if master:
        data = prepare(cfg.data, cfg.tokenizer, cfg.data_dir)
    if ddp:
        torch.distributed.barrier()
    if not master:
        data = prepare(cfg.data, cfg.tokenizer, cfg.data_dir, verbose=False)
    data.check_block_size(cfg.block_size)

    # model
    torch.manual_seed(cfg.seed + rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vocab_size = 50304 if cfg.tokenizer == "gpt2" else data.vocab_size  # GPT-2's 50257 padded to a multiple of 64
    if ckpt is not None:
        if ckpt["model_args"].get("vocab_size") != vocab_size:
            raise CheckpointError(f"checkpoint in {cfg.out_dir} has vocab_size {ckpt['model_args'].get('vocab_size')} but the data "
                                  f"has {vocab_size}; resume on the data it was trained on")
        model = checkpoint.model_from_checkpoint(ckpt, os.path.join(cfg.out_dir, "ckpt.pt"), dropout=cfg.dropout, backend=cfg.backend)
    else:
        model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                              bias=cfg.bias, vocab_size=vocab_size, dropout=cfg.dropout, backend=cfg.backend))
    model.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=(ptdtype == torch.float16))
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    start_iter, best_val = 0, float("inf")
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_iter, best_val = int(ckpt["iter_num"]), float(ckpt.get("best_val_loss", float("inf")))
        rng = ckpt.get("rng") or []
        if len(rng) == world:
            torch.set_rng_state(rng[rank]["torch"])
            if device.type == "cuda" and rng[rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[rank]["cuda"], device)
        else:
            say(f"note: the checkpoint's RNG states are for {len(rng)} process(es), not {world}; dropout draws are re-seeded")
            torch.manual_seed(cfg.seed + rank + start_iter)
    ckpt = None  # free the loaded copy
    raw_model = model
    if cfg.compile:
        say("compiling the model (torch.compile)...")
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ctx = contextlib.nullcontext() if ptdtype == torch.float32 else torch.autocast(device.type, dtype=ptdtype)

    mc = raw_model.config
    say(f"fastgpt.train: preset {preset}, {raw_model.get_num_params() / 1e6:.2f}M parameters "
        f"({mc.n_layer} layers x {mc.n_head} heads x {mc.n_embd} dims, context {mc.block_size}, vocabulary {mc.vocab_size}); "
        f"data {data.meta['source']} ({len(data.train):,} train / {len(data.val):,} val tokens, {data.meta['tokenizer']})")
    say(f"device {device}{f' x {world} processes' if ddp else ''}, {str(ptdtype).replace('torch.', '')}"
        f"{(f', {threads} CPU thread(s)' if not tuner else f', CPU threads tuned among {tuner.candidates}') if device.type == 'cpu' else ''}; "
        f"{tokens_per_iter:,} tokens/iteration ({cfg.gradient_accumulation_steps} x {cfg.batch_size} x {cfg.block_size}); "
        f"backends: {', '.join(f'{k}={v}' for k, v in report(device.type, ptdtype, n_embd=mc.n_embd, n_head=mc.n_head, block_size=mc.block_size).items())}")
    if start_iter:
        say(f"resuming {cfg.out_dir} at iteration {start_iter}")

    if cfg.eval_only:  # evaluate (the checkpoint, if there is one) and touch nothing on disk
        losses = evaluate(raw_model, data, cfg, device, ctx) if master else {}
        say(f"eval at iteration {start_iter}: train loss {losses.get('train', float('nan')):.4f}, val loss {losses.get('val', float('nan')):.4f}")
        return {"iters": start_iter, "train_loss": losses.get("train"), "val_loss": losses.get("val")} if master else None

    os.makedirs(cfg.out_dir, exist_ok=True) if master else None
    log_csv, eval_csv = os.path.join(cfg.out_dir, "log.csv"), os.path.join(cfg.out_dir, "eval.csv")
    if master:
        _rewrite_csv(log_csv, LOG_FIELDS, start_iter if start_iter else None)
        _rewrite_csv(eval_csv, EVAL_FIELDS, start_iter + 1 if start_iter else None)

    def save(iter_num):
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        rngs = [None] * world
        if ddp:
            torch.distributed.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if master:
            checkpoint.save({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "model_args": {k: getattr(mc, k) for k in checkpoint.MODEL_ARGS}, "iter_num": iter_num,
                "best_val_loss": best_val, "config": as_dict(cfg), "meta": data.meta, "rng": rngs, "format": "fastgpt-1",
            }, os.path.join(cfg.out_dir, "ckpt.pt"))
        return os.path.join(cfg.out_dir, "ckpt.pt")

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_iters, initial=start_iter, disable=not (master and cfg.progress), dynamic_ncols=True,
               unit="it", file=sys.stdout, leave=True)
    write = bar.write if (master and cfg.progress) else say
    peak = cfg.peak_flops or peak_flops(device, threads)  # MFU against all the cores
    saved_iter = start_iter if start_iter else None
    t_start = time.time()
    dt_ema = None
    losses = {}
    it = start_iter
    with _Interrupt(write) as interrupt:
        for it in range(start_iter, cfg.max_iters + 1):
            lr = lr_at(it, cfg)
            # evaluate and checkpoint (not again at the iteration a resumed run starts from)
            if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and not (it == start_iter and start_iter > 0):
                if master:
                    losses = evaluate(raw_model, data, cfg, device, ctx)
                    write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                    _append_csv(eval_csv, EVAL_FIELDS, {"iter": it, "train_loss": f"{losses['train']:.6f}", "val_loss": f"{losses['val']:.6f}",
                                                        "lr": f"{lr:.6g}", "elapsed_s": f"{time.time() - t_start:.2f}"})
                    improved = losses["val"] < best_val
                    best_val = min(best_val, losses["val"])
                else:
                    improved = False
                if ddp:
                    flag = torch.tensor([float(improved)], device=device)
                    torch.distributed.broadcast(flag, 0)
                    improved = bool(flag.item())
                if it > 0 and (improved or cfg.always_save_checkpoint):
                    save(it)
                    saved_iter = it
            if it == cfg.max_iters:
                break

            if tuner:
                n_threads = tuner.threads_for(it - start_iter)
                torch.set_num_threads(n_threads)
            t0 = time.time()
            for group in optimizer.param_groups:
                group["lr"] = lr
            starts = batch_starts(cfg.seed, it, len(data.train), cfg.gradient_accumulation_steps * cfg.batch_size, cfg.block_size)
            loss_sum = torch.zeros((), device=device)
            for micro in range(local_accum):
                k = rank * local_accum + micro  # this micro-step's slot in the global batch
                x, y = batch_from(data.train, starts[k * cfg.batch_size : (k + 1) * cfg.batch_size], cfg.block_size, device)
                if ddp:  # sync gradients only on the last micro-step
                    model.require_backward_grad_sync = micro == local_accum - 1
                with ctx:
                    _, loss = model(x, y)
                    loss = loss / local_accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach().float()
            stats = torch.stack([loss_sum, torch.tensor(float(interrupt.requested), device=device)])
            if ddp:  # the global batch's loss, and whether any rank was interrupted
                torch.distributed.all_reduce(stats)
                stats[0] /= world
            lossf, stop = stats[0].item(), stats[1].item() > 0
            if not math.isfinite(lossf):
                kept = f"the last good checkpoint {os.path.join(cfg.out_dir, 'ckpt.pt')} (iteration {saved_iter}) is kept" if saved_iter is not None \
                    else "no checkpoint was written yet"
                raise TrainError(f"loss is {lossf} at iteration {it}: training stopped and {kept}; lower --learning_rate, "
                                 f"set --grad_clip 1.0 or use --dtype bfloat16/float32, then --resume or start again")
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            dt = time.time() - t0
            if tuner:
                tuner.record(it - start_iter, n_threads, dt)
            if it > start_iter + 2:  # the first iterations warm up allocators and caches
                dt_ema = dt if dt_ema is None else 0.9 * dt_ema + 0.1 * dt
            shown = dt_ema or dt
            tok_s = tokens_per_iter / shown
            mfu = raw_model.estimate_mfu(cfg.batch_size * local_accum, shown, peak)
            if master:
                _append_csv(log_csv, LOG_FIELDS, {"iter": it, "loss": f"{lossf:.6f}", "lr": f"{lr:.6g}", "ms": f"{dt * 1000:.2f}",
                                                  "tokens_per_s": f"{tok_s:.1f}", "mfu": f"{mfu:.6f}"})
                bar.set_postfix_str(f"loss {lossf:.4f} | {tok_s:,.0f} tok/s | MFU {mfu * 100:.2f}%", refresh=False)
                bar.update(1)
                if not cfg.progress and (it % cfg.log_interval == 0):
                    say(f"iter {it}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms, {tok_s:,.0f} tokens/s, MFU {mfu * 100:.2f}%")
            if stop:
                path = save(it + 1)
                bar.close()
                raise SystemExit(f"interrupted at iteration {it + 1}: checkpoint saved to {path}; continue with --resume "
                                 f"--out_dir {cfg.out_dir}") if master else SystemExit(130)
    bar.close()
    if not master:
        return None

    elapsed = time.time() - t_start
    summary = {"preset": preset, "iters": it, "train_loss": losses.get("train"), "val_loss": losses.get("val"),
               "best_val_loss": best_val, "elapsed_s": round(elapsed, 2), "device": str(device), "world_size": world,
               "tokens_per_iter": tokens_per_iter,
               "cpu_threads": (tuner.best if tuner else threads) if device.type == "cpu" else None, "checkpoint": os.path.join(cfg.out_dir, "ckpt.pt") if saved_iter is not None else None,
               "config": as_dict(cfg)}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    note = plot_losses(cfg.out_dir) if cfg.plot else None
    say(f"done: {it} iterations in {elapsed:.1f} s, val loss {losses.get('val', float('nan')):.4f}; wrote {cfg.out_dir}/"
        f"{{ckpt.pt, log.csv, eval.csv, summary.json{', loss.png' if cfg.plot and not note else ''}}}")
    if note:
        say(f"note: {note}")

    if cfg.sample_chars > 0:
        tok = data.tokenizer
        start = [tok.stoi["\n"]] if data.meta["tokenizer"] == "char" and "\n" in tok.stoi else [0] if data.meta["tokenizer"] == "char" else [50256]
        raw_model.eval()
        torch.manual_seed(cfg.seed)
        with torch.no_grad(), ctx:
            out = raw_model.generate(torch.tensor([start], device=device), cfg.sample_chars, temperature=0.8, top_k=200)
        summary["sample"] = tok.decode(out[0, len(start):].tolist())
        say("sample:\n" + summary["sample"])
    return summary


def usage():
    from fastgpt.config import PRESETS, TrainConfig

    keys = "\n".join(f"  --{k} (default {v!r})" for k, v in as_dict(TrainConfig()).items())
    return f"{__doc__}\npresets: {', '.join(PRESETS)} (default here: {default_preset()})\n\nkeys:\n{keys}\n" \
           f"  --resume, --overwrite, --config FILE, --preset NAME"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    try:
        train(argv)
    except (ConfigError, DataError, CheckpointError, TrainError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
