"""Train a GPT: nanoGPT's train.py loop, on one CPU, one GPU or many (torchrun, DDP).

    python -m fastgpt.train                                   # the default preset for this machine
    python -m fastgpt.train --preset shakespeare-char --max_iters 3000
    python -m fastgpt.train configs/my_run.toml --data my.txt --batch_size 32
    python -m fastgpt.train --out_dir out/run1 --resume       # continue exactly where it stopped
    python -m fastgpt.train --init_from gpt2 --data my.txt    # fine-tune GPT-2 (local files; see fastgpt.sources)
    python -m fastgpt.train nanoGPT/config/train_shakespeare_char.py --device=cpu   # nanoGPT's config files
    torchrun --standalone --nproc_per_node 8 -m fastgpt.train --preset gpt2 --data corpus.txt

Settings: a preset, a config file and ``--key value`` overrides (see ``fastgpt.config``; an
unknown key lists the valid ones). Writes to out_dir: ckpt.pt (atomically), log.csv (every
iteration), eval.csv, summary.json and loss.png. Ctrl-C saves a checkpoint and stops; a NaN/inf
loss (in training or at an evaluation) stops the run, and no checkpoint with non-finite weights,
optimizer state or losses is ever written: the last good one is kept. A full disk stops the run
with the previous checkpoint intact. ``--resume`` restores the model, optimizer, grad scaler,
iteration and RNG states, so the resumed losses equal an uninterrupted run's; resuming a finished
run does nothing. ``--init_from`` starts from pretrained weights (a GPT-2 name, a Hugging Face
directory or a ckpt.pt): they fix the architecture and the tokenizer, and a smaller
``--block_size`` crops their context, as nanoGPT does.

The global batch is gradient_accumulation_steps x batch_size sequences per iteration, however
many processes run (torchrun): each process takes an equal contiguous share of it (sizes
differing by at most one), in micro-steps of at most batch_size, and its loss is weighted by its
share, so every iteration averages the same sequences as the single-process run. When the
processes divide gradient_accumulation_steps the micro-steps are the single process's own and
the losses equal its losses up to the order of float sums; otherwise (e.g. accumulation 1 on
8 GPUs: batch_size / 8 sequences each) the micro-batches are smaller, the average the same.
"""
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from fastgpt import checkpoint, hf, sources
from fastgpt._io import remove_stale_temporaries, why_unwritable
from fastgpt.backends import BackendError
from fastgpt.checkpoint import CheckpointError
from fastgpt.config import ConfigError, TrainConfig, as_dict, build, default_preset, from_dict
from fastgpt.data import GPT2_PADDED_VOCAB, GPT2_VOCAB, DataError, batch_from, prepare
from fastgpt.model import GPT, GPTConfig
from fastgpt.presets import PRESETS
from fastgpt.runlog import RunLog, wandb_run
from fastgpt.runtime import Distributed, Interrupt, Runtime, TrainError, quiet_exits, resolve_device

# ---------------------------------------------------------------------------------------------
# the schedule: learning rate and batches, functions of the iteration alone (so a resumed run
# and every rank of a distributed run agree)


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
    """The start offsets of iteration ``it``'s global batch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + it)
    return torch.randint(n_tokens - block_size, (count,), generator=g).tolist()


def eval_starts(seed, split, k, n_tokens, count, block_size):
    """Fixed evaluation batches (the same at every evaluation), apart from the training stream."""
    g = torch.Generator().manual_seed(seed * 7_919 + k * 104_729 + (1 if split == "val" else 0) + 17)
    return torch.randint(n_tokens - block_size, (count,), generator=g).tolist()


def global_batch(cfg):
    """Sequences per iteration over all processes."""
    return cfg.gradient_accumulation_steps * cfg.batch_size


def share_of(rank, world, total):
    """(first, end): process ``rank``'s contiguous share of ``total`` sequences, the shares'
    sizes differing by at most one."""
    base, extra = divmod(total, world)
    first = rank * base + min(rank, extra)
    return first, first + base + (rank < extra)


def micro_batches(cfg, rank, world):
    """Process ``rank``'s micro-steps: (first, end) slices of the global batch, at most batch_size each."""
    first, end = share_of(rank, world, global_batch(cfg))
    return [(i, min(i + cfg.batch_size, end)) for i in range(first, end, cfg.batch_size)]


def check_world(cfg, world):
    if global_batch(cfg) < world:
        raise ConfigError(f"the global batch (gradient_accumulation_steps x batch_size = {global_batch(cfg)} sequences) is smaller "
                          f"than the number of processes ({world}); raise --batch_size or --gradient_accumulation_steps")


# ---------------------------------------------------------------------------------------------
# the train state: what a checkpoint holds


@dataclass
class TrainState:
    model: GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    iter_num: int = 0
    best_val_loss: float = float("inf")
    saved_iter: Optional[int] = None  # the iteration of the checkpoint on disk
    start_evaluated: bool = False  # whether the iteration this run starts at was evaluated already

    @classmethod
    def create(cls, cfg, vocab_size, rt, ckpt=None, init=None):
        """A fresh model and optimizer, or the checkpoint's, with its RNG states restored.
        init: pretrained weights to start from instead of a fresh model (init_from)."""
        torch.manual_seed(cfg.seed + rt.dist.rank)
        if init is not None:
            model = init
        elif ckpt is None:
            model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                                  bias=cfg.bias, vocab_size=vocab_size, dropout=cfg.dropout, backend=cfg.backend,
                                  fused_loss=cfg.fused_loss))
        else:
            if ckpt["model_args"].get("vocab_size") != vocab_size:
                raise CheckpointError(f"checkpoint in {cfg.out_dir} has vocab_size {ckpt['model_args'].get('vocab_size')} but "
                                      f"the data has {vocab_size}; resume on the data it was trained on")
            model = checkpoint.model_from_checkpoint(ckpt, os.path.join(cfg.out_dir, "ckpt.pt"), dropout=cfg.dropout,
                                                     backend=cfg.backend, fused_loss=cfg.fused_loss)
        model.to(rt.device)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=(rt.dtype == torch.float16))
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), rt.device.type)
        state = cls(model, optimizer, scaler)
        if ckpt is not None:
            state.iter_num, state.best_val_loss, rngs, state.start_evaluated = checkpoint.restore_training(ckpt, optimizer, scaler)
            state.saved_iter = state.iter_num
            if len(rngs) == rt.dist.world:
                rt.set_rng_state(rngs[rt.dist.rank])
            else:
                rt.say(f"note: the checkpoint's RNG states are for {len(rngs)} process(es), not {rt.dist.world}; dropout draws are re-seeded")
                torch.manual_seed(cfg.seed + rt.dist.rank + state.iter_num)
        return state

    def save(self, cfg, meta, rt, iter_num, evaluated=True):
        """Checkpoint the run as of ``iter_num`` (every rank's RNG state; rank 0 writes), unless
        a weight or optimizer state is not finite: then TrainError, and the last good one stays."""
        bad = self.first_non_finite()  # the same on every rank: the weights are in sync
        if bad is not None:
            raise TrainError(f"{bad} is not finite at iteration {iter_num}: training stopped, no checkpoint written, and "
                             f"{self.kept(cfg)}; {DIVERGED_HINT}")
        rngs = rt.dist.gather(rt.rng_state())
        path = os.path.join(cfg.out_dir, "ckpt.pt")
        if rt.dist.master:
            checkpoint.save(checkpoint.training_checkpoint(self.model, self.optimizer, self.scaler, iter_num,
                                                           self.best_val_loss, as_dict(cfg), meta, rngs, evaluated), path)
        self.saved_iter = iter_num
        return path

    def first_non_finite(self):
        """The first weight or optimizer state holding a NaN/inf (a description), or None."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        tensors = [(f"the weight {n}", p) for n, p in self.model.named_parameters()]
        tensors += [(f"the optimizer's {k} of {names.get(id(p), 'a parameter')}", v) for p, st in self.optimizer.state.items()
                    for k, v in st.items() if torch.is_tensor(v) and v.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).cpu()  # one device sync
        return None if finite.all() else tensors[int((~finite).nonzero()[0])][0]

    def kept(self, cfg):
        if self.saved_iter is None:
            return "this run wrote no checkpoint"
        return f"the last good checkpoint {os.path.join(cfg.out_dir, 'ckpt.pt')} (iteration {self.saved_iter}) is kept"


DIVERGED_HINT = "lower --learning_rate, set --grad_clip 1.0 or use --dtype bfloat16/float32, then --resume or start again"


# ---------------------------------------------------------------------------------------------
# one iteration, and one evaluation


def train_step(model, state, data, cfg, rt, lr, interrupt):
    """One optimizer step over this process's share of the global batch.
    Returns (the global batch's loss, whether any process has been interrupted by now)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    total = global_batch(cfg)
    micro = micro_batches(cfg, rt.dist.rank, rt.dist.world)
    starts = batch_starts(cfg.seed, state.iter_num, len(data.train), total, cfg.block_size)
    loss_sum = torch.zeros((), device=rt.device)
    for n, (first, end) in enumerate(micro):
        x, y = batch_from(data.train, starts[first:end], cfg.block_size, rt.device)
        if rt.dist.enabled:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = n == len(micro) - 1
        with rt.autocast:
            _, loss = model(x, y)
            # weight by the micro-batch's part of the global batch (DDP averages over processes):
            # 1 / accumulation steps when the processes divide them evenly
            loss = loss / (total / ((end - first) * rt.dist.world))
        state.scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    stats = torch.stack([loss_sum, torch.tensor(float(interrupt.requested), device=rt.device)])
    if rt.dist.enabled:  # the global batch's loss, and whether any rank was interrupted
        torch.distributed.all_reduce(stats)
        stats[0] /= rt.dist.world
    loss, stop = stats[0].item(), stats[1].item() > 0
    if not math.isfinite(loss):
        raise TrainError(f"loss is {loss} at iteration {state.iter_num}: training stopped and {state.kept(cfg)}; {DIVERGED_HINT}")
    if cfg.grad_clip:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    return loss, stop


@torch.no_grad()
def evaluate(model, data, cfg, rt):
    """Mean loss over cfg.eval_iters fixed batches of each split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        arr = data.split(split)
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = batch_from(arr, eval_starts(cfg.seed, split, k, len(arr), cfg.batch_size, cfg.block_size), cfg.block_size, rt.device)
            with rt.autocast:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


def evaluate_and_checkpoint(state, data, cfg, rt, log, lr, elapsed):
    """Evaluate (rank 0), then checkpoint if the val loss improved or always_save_checkpoint.
    A non-finite evaluation loss stops the run (TrainError) and saves nothing."""
    losses, improved, diverged = {}, False, False
    if rt.dist.master:
        losses = evaluate(state.model, data, cfg, rt)
        log.eval(state.iter_num, losses, lr, elapsed)
        diverged = not all(math.isfinite(v) for v in losses.values())
        improved = not diverged and losses["val"] < state.best_val_loss
        state.best_val_loss = min(state.best_val_loss, losses["val"]) if not diverged else state.best_val_loss
    if rt.dist.enabled:
        flags = torch.tensor([float(improved), float(diverged)], device=rt.device)
        torch.distributed.broadcast(flags, 0)
        improved, diverged = bool(flags[0].item()), bool(flags[1].item())
    if diverged:
        shown = ", ".join(f"{k} loss {v}" for k, v in losses.items()) or "a loss that is not finite"
        raise TrainError(f"evaluation at iteration {state.iter_num} gave {shown}: training stopped, no checkpoint written, and "
                         f"{state.kept(cfg)}; {DIVERGED_HINT}")
    if state.iter_num > 0 and (improved or cfg.always_save_checkpoint):
        state.save(cfg, data.meta, rt, state.iter_num)
    return losses


# ---------------------------------------------------------------------------------------------
# the run


def train(argv=None):
    """Run training from command-line style arguments; returns a summary dict (rank 0)."""
    cfg, explicit, preset, flags, notes = build(sys.argv[1:] if argv is None else argv)
    dist = Distributed.from_env()
    resolve_device(cfg.device, dist.local_rank if dist.enabled else None)  # fails before anything touches the disk
    if not cfg.eval_only:
        check_out_dir(cfg.out_dir, dist)
    settings, ckpt = checkpoint.start_or_resume(as_dict(cfg), explicit, cfg.out_dir, flags.get("resume", False),
                                                flags.get("overwrite", False), cfg.eval_only)
    cfg = from_dict(settings).validate()
    if ckpt is not None and not cfg.eval_only and checkpoint.finished(ckpt, cfg.max_iters):
        if dist.master:
            print(f"nothing to do: {os.path.join(cfg.out_dir, 'ckpt.pt')} is at iteration {ckpt['iter_num']} (max_iters "
                  f"{cfg.max_iters}), evaluated and saved; pass a larger --max_iters to train on")
        return None
    init = None
    if ckpt is None and cfg.init_from != "scratch":
        init, cfg = pretrained(cfg, explicit)
    check_world(cfg, dist.world)
    if dist.master:
        for note in notes:
            print(f"note: {note}")
    rt = Runtime.start(cfg.device, cfg.dtype, dist, cfg.threads, tune_every=cfg.eval_interval)
    finished = False
    try:
        summary = run(cfg, preset, ckpt, rt, init)
        finished = True
        return summary
    finally:
        rt.close(finished)


def run(cfg, preset, ckpt, rt, init=None):
    data = load_data(cfg, rt, init)
    state = TrainState.create(cfg, GPT2_PADDED_VOCAB if cfg.tokenizer == "gpt2" else data.vocab_size, rt, ckpt, init.model if init else None)
    del ckpt, init  # free the loaded copies
    model = wrap(state.model, cfg, rt)
    backends = check_backends(state.model, rt)
    rt.say(banner(cfg, preset, state, data, rt, backends))
    if cfg.eval_only:  # evaluate (the checkpoint, if there is one) and touch nothing on disk
        return eval_only(state, data, cfg, rt)
    first = state.iter_num
    log = RunLog(cfg.out_dir, active=rt.dist.master, start=first, max_iters=cfg.max_iters, tokens_per_iter=tokens_per_iter(cfg),
                 flops_per_iter=flops_per_iter(state.model, cfg, rt), peak_flops=cfg.peak_flops or rt.peak_flops,
                 progress=cfg.progress, log_interval=cfg.log_interval,
                 wandb=wandb_run(cfg.wandb_log and rt.dist.master, cfg.wandb_project, cfg.wandb_run_name, as_dict(cfg), rt.say))
    t_start, losses = time.time(), {}
    with log, Interrupt(log.write) as interrupt:
        while True:
            it = state.iter_num
            lr = lr_at(it, cfg)
            if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and not (it == first and state.start_evaluated):
                losses = evaluate_and_checkpoint(state, data, cfg, rt, log, lr, time.time() - t_start)
            if it == cfg.max_iters:
                break
            with rt.timed_step(it - first) as step:
                loss, stop = train_step(model, state, data, cfg, rt, lr, interrupt)
            log.step(it, loss, lr, step.dt)
            state.iter_num += 1
            if stop:
                log.close()
                path = state.save(cfg, data.meta, rt, state.iter_num, evaluated=False)
                raise SystemExit(f"interrupted at iteration {state.iter_num}: checkpoint saved to {path}; continue with "
                                 f"--resume --out_dir {cfg.out_dir}") if rt.dist.master else SystemExit(130)
    return finish(state, data, cfg, rt, log, preset, losses, time.time() - t_start) if rt.dist.master else None


# ---------------------------------------------------------------------------------------------
# around the loop


def check_out_dir(out_dir, dist):
    """One clear line now, not a traceback at the first save, if out_dir cannot be written;
    removes the temporaries that killed runs left there."""
    reason = why_unwritable(out_dir)
    if reason is not None:
        raise TrainError(f"out_dir {out_dir} {reason}; pass a writable --out_dir")
    if dist.master:
        for path in remove_stale_temporaries(out_dir):
            print(f"removed {path}, a partial checkpoint left by a process that no longer exists")


def load_data(cfg, rt, init=None):
    """The tokenized data: rank 0 prepares it (once, cached), the others then read its files."""
    bpe = init.bpe if init else None
    data = prepare(cfg.data, cfg.tokenizer, cfg.data_dir, bpe=bpe) if rt.dist.master else None
    rt.dist.barrier()
    if data is None:
        data = prepare(cfg.data, cfg.tokenizer, cfg.data_dir, verbose=False, bpe=bpe)
    data.check_block_size(cfg.block_size)
    if init:
        init.check_data(data)
    return data


# ---------------------------------------------------------------------------------------------
# init_from: pretrained weights to fine-tune


@dataclass
class Pretrained:
    """The weights named by init_from, and what they ask of the data."""

    model: GPT
    source: str
    meta: Optional[dict] = None  # a fastgpt checkpoint's tokenizer
    bpe: Optional[str] = None  # a directory with GPT-2's BPE files beside the weights

    def check_data(self, data):
        """The data must be tokenized the way the weights were."""
        vocab = self.model.config.vocab_size
        if self.meta and self.meta.get("tokenizer") == "char" and data.meta.get("chars") != self.meta.get("chars"):
            raise DataError(f"init_from {self.source}: that model was trained on other characters than {data.meta['source']} has; "
                            f"fine-tune a character-level model on text with the same characters, or train from scratch")
        if data.meta["tokenizer"] == "char" and not self.meta and data.vocab_size != vocab:
            raise DataError(f"init_from {self.source}: the weights have a vocabulary of {vocab} but {data.meta['source']} has "
                            f"{data.vocab_size} characters; use the text they were trained on, or train from scratch")
        if data.vocab_size > vocab:
            raise DataError(f"init_from {self.source}: the data's vocabulary ({data.vocab_size}) is larger than the weights' ({vocab})")


def pretrained(cfg, explicit):
    """(Pretrained, cfg) for cfg.init_from: the weights, and the settings they fix (architecture,
    tokenizer; block_size: theirs, or a smaller explicit one that crops them)."""
    source = cfg.init_from
    meta = bpe = None
    if os.path.isfile(source) or os.path.isfile(os.path.join(source, "ckpt.pt")):  # nanoGPT/fastgpt checkpoint
        path = checkpoint.resolve(source)
        ckpt = checkpoint.load(path)
        model = checkpoint.model_from_checkpoint(ckpt, path, dropout=cfg.dropout, backend=cfg.backend, fused_loss=cfg.fused_loss)
        meta = ckpt.get("meta")
        bpe = (meta or {}).get("bpe")
        del ckpt
    else:  # a GPT-2 name or a Hugging Face directory
        model = hf.from_pretrained(source, dropout=cfg.dropout, backend=cfg.backend, fused_loss=cfg.fused_loss)
        bpe = sources.bpe_dir(source)
    mc = model.config
    fixed = {k: getattr(mc, k) for k in ("n_layer", "n_head", "n_embd", "bias")}
    fixed["tokenizer"] = meta["tokenizer"] if meta else ("gpt2" if mc.vocab_size >= GPT2_VOCAB else "char")
    clash = [f"{k}={explicit[k]!r} (the weights: {v!r})" for k, v in fixed.items() if k in explicit and explicit[k] != v]
    if clash:
        raise ConfigError(f"init_from {source!r} fixes {', '.join(clash)}; drop those settings")
    block = explicit.get("block_size", mc.block_size)
    if block > mc.block_size:
        raise ConfigError(f"block_size {block} is longer than the context of init_from {source!r} ({mc.block_size}); "
                          f"use --block_size {mc.block_size} or less")
    if block < mc.block_size:
        model.crop_block_size(block)  # nanoGPT's model surgery
    cfg = dataclasses.replace(cfg, **fixed, block_size=block)
    return Pretrained(model, source, meta, bpe), cfg


def check_backends(model, rt):
    """{op: backend} for the banner; raises BackendError at once when a forced one cannot run."""
    backends = model.backends(rt.device.type, rt.dtype)
    for name in backends.values():
        if name.startswith("error: "):
            raise BackendError(name[len("error: "):])
    return backends


def wrap(model, cfg, rt):
    """The model the loop calls: compiled and/or DDP-wrapped as configured."""
    if cfg.compile:
        rt.say("compiling the model (torch.compile)...")
        model = torch.compile(model)
    if rt.dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model


def tokens_per_iter(cfg):
    return global_batch(cfg) * cfg.block_size


def flops_per_iter(model, cfg, rt):
    """This process's model FLOPs per iteration (nanoGPT's estimate_mfu count, for MFU)."""
    first, end = share_of(rt.dist.rank, rt.dist.world, global_batch(cfg))
    return model.estimate_mfu(end - first, 1.0, 1.0)


def banner(cfg, preset, state, data, rt, backends):
    mc = state.model.config
    lines = [
        f"fastgpt.train: preset {preset}, {state.model.get_num_params() / 1e6:.2f}M parameters "
        f"({mc.n_layer} layers x {mc.n_head} heads x {mc.n_embd} dims, context {mc.block_size}, vocabulary {mc.vocab_size}); "
        f"data {data.meta['source']} ({len(data.train):,} train / {len(data.val):,} val tokens, {data.meta['tokenizer']})",
        f"{rt.describe()}; {tokens_per_iter(cfg):,} tokens/iteration ({cfg.gradient_accumulation_steps} x {cfg.batch_size} x "
        f"{cfg.block_size}); backends: {', '.join(f'{k}={v}' for k, v in backends.items())}",
    ]
    if state.iter_num:
        lines.append(f"resuming {cfg.out_dir} at iteration {state.iter_num}")
    elif cfg.init_from != "scratch":
        lines.append(f"fine-tuning {cfg.init_from}")
    return "\n".join(lines)


def eval_only(state, data, cfg, rt):
    losses = evaluate(state.model, data, cfg, rt) if rt.dist.master else {}
    rt.say(f"eval at iteration {state.iter_num}: train loss {losses.get('train', float('nan')):.4f}, "
           f"val loss {losses.get('val', float('nan')):.4f}")
    return {"iters": state.iter_num, "train_loss": losses.get("train"), "val_loss": losses.get("val")} if rt.dist.master else None


def finish(state, data, cfg, rt, log, preset, losses, elapsed):
    """summary.json, loss.png and a sample."""
    summary = {"preset": preset, "iters": state.iter_num, "train_loss": losses.get("train"), "val_loss": losses.get("val"),
               "best_val_loss": state.best_val_loss, "elapsed_s": round(elapsed, 2), "device": str(rt.device),
               "world_size": rt.dist.world, "tokens_per_iter": tokens_per_iter(cfg),
               "cpu_threads": ((rt.tuner.best if rt.tuner else rt.threads) if rt.device.type == "cpu" else None),
               "checkpoint": os.path.join(cfg.out_dir, "ckpt.pt") if state.saved_iter is not None else None,
               "config": as_dict(cfg)}
    log.summary(summary)
    plotted = log.plot_in_background() if cfg.plot else None  # drawn on another core while the sample runs
    if cfg.sample_chars > 0:
        summary["sample"] = sample_text(state.model, data, cfg, rt)
    note = plotted() if plotted else None
    rt.say(f"done: {state.iter_num} iterations in {elapsed:.1f} s, val loss {losses.get('val', float('nan')):.4f}; wrote "
           f"{cfg.out_dir}/{{ckpt.pt, log.csv, eval.csv, summary.json{', loss.png' if cfg.plot and not note else ''}}}")
    if note:
        rt.say(f"note: {note}")
    if "sample" in summary:
        rt.say("sample:\n" + summary["sample"])
    return summary


def sample_text(model, data, cfg, rt):
    """cfg.sample_chars tokens from a newline (char data) or <|endoftext|> (GPT-2 BPE)."""
    tok = data.tokenizer
    start = tok.start()
    model.eval()
    torch.manual_seed(cfg.seed)
    with torch.no_grad(), rt.autocast:
        out = model.generate(torch.tensor([start], device=rt.device), cfg.sample_chars, temperature=0.8, top_k=200)
    return tok.decode(out[0, len(start):].tolist())


def usage():
    keys = "\n".join(f"  --{k} (default {v!r})" for k, v in as_dict(TrainConfig()).items())
    return f"{__doc__}\npresets: {', '.join(PRESETS)} (default here: {default_preset()})\n\nkeys:\n{keys}\n" \
           f"  --resume, --overwrite, --config FILE, --preset NAME"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    with quiet_exits():  # a second Ctrl-C stops without saving; | head stops the run quietly
        try:
            train(argv)
        except (ConfigError, DataError, CheckpointError, TrainError, BackendError) as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
