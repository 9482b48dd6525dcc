#!/usr/bin/env python3
"""The default main job against nanoGPT's own train.py, timed in pairs on this machine (A B A B).

    python scripts/paired_timing.py --nanogpt /path/to/nanoGPT [--pairs 2] [--max_iters 2000]

A: ``./scripts/train.sh`` as a user runs it (the environment check, training, evaluation,
checkpoints, summary, loss.png and the printed sample), into a scratch out_dir.
B: nanoGPT's train.py with its config/train_shakespeare_char.py and the CPU settings of nanoGPT's
README (``--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0``, plus ``--dtype=float32``), on the same tokens: the script writes nanoGPT's
data/shakespeare_char/{train,val}.bin and meta.pkl from fastgpt's tokenization of the embedded
corpus, in a temporary directory. Both run on the CPU with the same Python and torch; nanoGPT's
train.py trains one iteration more (its loop ends after iteration max_iters).

Prints each run's wall time (from the command to its exit), its final val loss and the load
average around it, then each pair's ratio A/B. The machine's load moves these numbers: run it
when the machine is quiet, and quote the spread.
"""
import argparse
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--dtype=float32", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--lr_decay_iters=2000", "--dropout=0.0"]


def prepare_nanogpt_data(work, python):
    """nanoGPT's data/shakespeare_char/ from fastgpt's tokenization of the embedded corpus."""
    code = ("import json, sys; from fastgpt.data import prepare; d = prepare('shakespeare', 'char', sys.argv[1], verbose=False); "
            "print(json.dumps({'path': d.path, 'chars': d.meta['chars']}))")
    import json

    out = json.loads(subprocess.run([python, "-c", code, os.path.join(work, "fastgpt_cache")], check=True, capture_output=True,
                                    text=True, cwd=ROOT).stdout)
    folder = os.path.join(work, "data", "shakespeare_char")
    os.makedirs(folder)
    for split in ("train", "val"):
        shutil.copy(os.path.join(out["path"], f"{split}.bin"), folder)
    chars = out["chars"]
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)


def timed(argv, cwd, env):
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    vals = re.findall(r"val loss (\d+\.\d+)", r.stdout)
    return dt, float(vals[-1]) if vals else float("nan"), load, os.getloadavg()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR", "/work/nanogpt"), help="a nanoGPT checkout")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"), help="the Python both run with")
    a = p.parse_args()
    if not os.path.isfile(os.path.join(a.nanogpt, "train.py")):
        sys.exit(f"no nanoGPT checkout at {a.nanogpt}; pass --nanogpt")
    work = tempfile.mkdtemp(prefix="paired_timing_")
    prepare_nanogpt_data(work, a.python)
    shutil.copy(os.path.join(a.nanogpt, "configurator.py"), work)  # nanoGPT's train.py execs it from its working directory
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    nano_env = {**env, "PYTHONPATH": a.nanogpt}
    fastgpt_cmd = ["./scripts/train.sh", "--max_iters", str(a.max_iters), "--lr_decay_iters", str(a.max_iters)]
    nano_cmd = [a.python, os.path.join(a.nanogpt, "train.py"), os.path.join(a.nanogpt, "config", "train_shakespeare_char.py"),
                *NANOGPT_CPU, f"--max_iters={a.max_iters}"]
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
          f"{torch.__version__}; {a.max_iters} iterations; A = ./scripts/train.sh, B = nanoGPT's train.py")
    print(f"{'run':<8} {'wall s':>8} {'val loss':>9} {'load before':>12} {'load after':>11}")
    results = []
    for i in range(a.pairs):
        pair = {}
        for side in ("A", "B"):
            if side == "A":
                out = os.path.join(work, f"fastgpt_out_{i}")
                r = timed([*fastgpt_cmd, "--out_dir", out], ROOT, {**env, "FASTGPT_VENV": os.path.dirname(os.path.dirname(a.python))})
            else:
                r = timed([*nano_cmd, f"--out_dir={os.path.join(work, f'nanogpt_out_{i}')}"], work, nano_env)
            pair[side] = r
            print(f"{side}{i + 1:<7} {r[0]:>8.1f} {r[1]:>9.4f} {r[2]:>12.2f} {r[3]:>11.2f}", flush=True)
        results.append(pair["A"][0] / pair["B"][0])
    print("A/B per pair: " + ", ".join(f"{x:.3f}" for x in results) + f"; mean {sum(results) / len(results):.3f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
