"""What a training run writes about itself: log.csv (every iteration), eval.csv, the progress
bar (on a terminal) or log lines, summary.json, loss.png and, when asked, Weights & Biases.
Only the first process of a run writes."""
import csv
import json
import os
import subprocess
import sys
import time

LOG_FIELDS = ["iter", "loss", "lr", "ms", "tokens_per_s", "mfu"]
EVAL_FIELDS = ["iter", "train_loss", "val_loss", "lr", "elapsed_s"]


def _restart_csv(path, fields, keep_below=None):
    """Start a CSV (fresh), or keep only the rows before iteration ``keep_below`` (resume)."""
    rows = []
    if keep_below is not None and os.path.isfile(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("iter", "").isdigit() and int(r["iter"]) < keep_below]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def on_terminal(stream=None):
    """Whether ``stream`` (stdout) is an interactive terminal, where a progress bar belongs."""
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


class RunLog:
    """The run's logs, from iteration ``start`` on (a resumed run keeps the rows before it).

    flops_per_iter / peak_flops: for each iteration's model-FLOPs utilisation. Per-iteration rows
    are written in batches (at every evaluation, every FLUSH_S seconds and at the end), so the
    loop does not pay for a file write each step. The progress bar is drawn only on a terminal
    (and refreshed a few times a second); elsewhere, or with progress=False, a plain line goes
    out every log_interval iterations. Use as a context manager: leaving it flushes and closes.
    """

    FLUSH_S = 5.0  # seconds between writes of buffered log.csv rows
    REFRESH_S = 0.25  # seconds between progress-bar redraws

    def __init__(self, out_dir, *, active, start, max_iters, tokens_per_iter, flops_per_iter, peak_flops, progress, log_interval,
                 wandb=None, stream=None):
        self.out_dir, self.active = out_dir, active
        self.tokens_per_iter, self.flops_per_iter, self.peak_flops = tokens_per_iter, flops_per_iter, peak_flops
        self.log_interval, self.wandb = log_interval, wandb
        self.stream = stream or sys.stdout
        self.start, self.dt_ema = start, None
        self.log_csv, self.eval_csv = os.path.join(out_dir, "log.csv"), os.path.join(out_dir, "eval.csv")
        self.rows, self.last_flush = [], time.monotonic()
        self.bar, self.pending, self.last_draw = None, 0, 0.0
        if not active:
            return
        os.makedirs(out_dir, exist_ok=True)
        _restart_csv(self.log_csv, LOG_FIELDS, start if start else None)
        _restart_csv(self.eval_csv, EVAL_FIELDS, start + 1 if start else None)
        if progress and on_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=max_iters, initial=start, dynamic_ncols=True, unit="it", file=self.stream, leave=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write(self, msg):
        """A line of text, above the progress bar when there is one."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def eval(self, it, losses, lr, elapsed, mfu=None):
        self.write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if not self.active:
            return
        self.flush()
        with open(self.eval_csv, "a", newline="") as f:
            csv.writer(f).writerow([it, f"{losses['train']:.6f}", f"{losses['val']:.6f}", f"{lr:.6g}", f"{elapsed:.2f}"])
        if self.wandb is not None:  # nanoGPT's keys
            self.wandb.log({"iter": it, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                            "mfu": (self.mfu(self.dt_ema) * 100) if self.dt_ema else None})

    def mfu(self, dt):
        return self.flops_per_iter / dt / self.peak_flops

    def step(self, it, loss, lr, dt):
        if not self.active:
            return
        if it > self.start + 2:  # the first iterations warm up allocators and caches
            self.dt_ema = dt if self.dt_ema is None else 0.9 * self.dt_ema + 0.1 * dt
        shown = self.dt_ema or dt
        tok_s, mfu = self.tokens_per_iter / shown, self.mfu(shown)
        self.rows.append((it, f"{loss:.6f}", f"{lr:.6g}", f"{dt * 1000:.2f}", f"{tok_s:.1f}", f"{mfu:.6f}"))
        now = time.monotonic()
        if now - self.last_flush > self.FLUSH_S:
            self.flush(now)
        if self.bar is not None:
            self.pending += 1
            if now - self.last_draw > self.REFRESH_S:
                self.bar.set_postfix_str(f"loss {loss:.4f} | {tok_s:,.0f} tok/s | MFU {mfu * 100:.2f}%", refresh=False)
                self.bar.update(self.pending)
                self.pending, self.last_draw = 0, now
        elif it % self.log_interval == 0:
            print(f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms, {tok_s:,.0f} tokens/s, MFU {mfu * 100:.2f}%",
                  file=self.stream, flush=True)

    def flush(self, now=None):
        """Write the buffered log.csv rows."""
        if self.rows:
            with open(self.log_csv, "a", newline="") as f:
                csv.writer(f).writerows(self.rows)
            self.rows = []
        self.last_flush = now or time.monotonic()

    def close(self):
        if not self.active:
            return
        self.flush()
        if self.bar is not None:
            if self.pending:
                self.bar.update(self.pending)
                self.pending = 0
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def summary(self, summary):
        with open(os.path.join(self.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)

    def plot_in_background(self):
        """Starts plot_losses() in a separate process (matplotlib's import and drawing take ~1.5 s of
        one core, overlapped with the sample); returns a function that waits for it and returns
        plot_losses()' note, or what went wrong."""
        return plot_in_background(self.out_dir)


def plot_losses(out_dir):
    """loss.png from log.csv and eval.csv (skipped, with a note, without matplotlib)."""
    try:  # the Figure API, not pyplot: no global state, and less to import
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no loss.png (pip install matplotlib)"
    train = read_log(os.path.join(out_dir, "log.csv"))
    evals = read_log(os.path.join(out_dir, "eval.csv"))
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
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
    return None


def plot_in_background(out_dir):
    """plot_losses(out_dir) in a fresh interpreter that runs this file alone (stdlib and
    matplotlib: no torch import); returns wait() -> its note or None."""
    code = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = subprocess.Popen([sys.executable, "-c", code, os.path.abspath(__file__), out_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait():
        out, err = proc.communicate()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return f"loss.png could not be drawn: {last}"
        return out.strip() or None

    return wait


def wandb_run(enabled, project, name, config, say):
    """A Weights & Biases run (``wandb.init``) when ``enabled`` and the package imports; else None,
    with a note through ``say`` when it was asked for but wandb is missing."""
    if not enabled:
        return None
    try:
        import wandb
    except ImportError:
        say("note: wandb_log is set but the wandb package is not installed: no Weights & Biases logging (pip install wandb)")
        return None
    return wandb.init(project=project, name=name, config=config)


if __name__ == "__main__":  # plot_in_background's child: python runlog.py OUT_DIR
    print(plot_losses(sys.argv[1]) or "", end="")
