"""What a training run writes about itself: log.csv (every iteration), eval.csv, the progress
bar or log lines, summary.json and loss.png. Only the first process of a run writes."""
import csv
import json
import os
import sys

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


def _append_csv(path, fields, row):
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLog:
    """The run's logs, from iteration ``start`` on (a resumed run keeps the rows before it).

    mfu(dt): the model-FLOPs utilisation of an iteration that took dt seconds.
    """

    def __init__(self, out_dir, *, active, start, max_iters, tokens_per_iter, mfu, progress, log_interval):
        self.out_dir, self.active = out_dir, active
        self.tokens_per_iter, self.mfu = tokens_per_iter, mfu
        self.progress, self.log_interval = progress, log_interval
        self.start, self.dt_ema = start, None
        self.log_csv, self.eval_csv = os.path.join(out_dir, "log.csv"), os.path.join(out_dir, "eval.csv")
        if active:
            os.makedirs(out_dir, exist_ok=True)
            _restart_csv(self.log_csv, LOG_FIELDS, start if start else None)
            _restart_csv(self.eval_csv, EVAL_FIELDS, start + 1 if start else None)
        from tqdm import tqdm

        self.bar = tqdm(total=max_iters, initial=start, disable=not (active and progress), dynamic_ncols=True,
                        unit="it", file=sys.stdout, leave=True)

    def write(self, msg):
        """A line of text, above the progress bar when there is one."""
        if not self.active:
            return
        if self.progress:
            self.bar.write(msg)
        else:
            print(msg)

    def eval(self, it, losses, lr, elapsed):
        self.write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if self.active:
            _append_csv(self.eval_csv, EVAL_FIELDS, {"iter": it, "train_loss": f"{losses['train']:.6f}", "val_loss": f"{losses['val']:.6f}",
                                                     "lr": f"{lr:.6g}", "elapsed_s": f"{elapsed:.2f}"})

    def step(self, it, loss, lr, dt):
        if it > self.start + 2:  # the first iterations warm up allocators and caches
            self.dt_ema = dt if self.dt_ema is None else 0.9 * self.dt_ema + 0.1 * dt
        shown = self.dt_ema or dt
        tok_s, mfu = self.tokens_per_iter / shown, self.mfu(shown)
        if not self.active:
            return
        _append_csv(self.log_csv, LOG_FIELDS, {"iter": it, "loss": f"{loss:.6f}", "lr": f"{lr:.6g}", "ms": f"{dt * 1000:.2f}",
                                               "tokens_per_s": f"{tok_s:.1f}", "mfu": f"{mfu:.6f}"})
        self.bar.set_postfix_str(f"loss {loss:.4f} | {tok_s:,.0f} tok/s | MFU {mfu * 100:.2f}%", refresh=False)
        self.bar.update(1)
        if not self.progress and it % self.log_interval == 0:
            print(f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms, {tok_s:,.0f} tokens/s, MFU {mfu * 100:.2f}%")

    def close(self):
        self.bar.close()

    def summary(self, summary):
        with open(os.path.join(self.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)

    def plot(self):
        """loss.png from log.csv and eval.csv; returns a note instead without matplotlib."""
        return plot_losses(self.out_dir)


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
