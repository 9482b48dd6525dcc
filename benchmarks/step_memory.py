"""Peak memory of whole training steps with and without GPTConfig.fused_loss, each in a fresh process.

    python benchmarks/step_memory.py                                    # gpt2 preset, B=4, T=256, CPU, fp32
    python benchmarks/step_memory.py --device cuda --batch 16 --block 1024 --dtype bfloat16

Each setting runs in a process of its own: it builds the model and AdamW as fastgpt.train does
(on the CPU with the trainer's malloc settings), runs --steps training steps on random tokens
(forward with targets, backward, gradient clipping, AdamW step; the first step allocates
AdamW's state) and reports its peak resident set size (getrusage ru_maxrss) — also as it was
before the first step — and on CUDA ``torch.cuda.max_memory_allocated``. On the CPU it then
runs one more step under torch's profiler and reports the most tensor memory allocated above
the step's start (``step_peak_allocated_MiB``): the allocator's own count, which glibc's heap
(the RSS) blurs by a hundred MiB or more from run to run. Prints one JSON line per setting,
then a comparison.
"""
import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args):
    import torch

    from fastgpt import GPT
    from fastgpt.runtime import autocast, keep_freed_memory

    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as fastgpt.train's runtime does on the CPU
    torch.manual_seed(0)
    model = GPT.from_preset(args.preset, block_size=args.block, dropout=0.0, fused_loss=args.fused_loss).to(device)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    seq = torch.randint(0, model.config.vocab_size, (args.batch, args.block + 1), device=device)
    x, y = seq[:, :-1], seq[:, 1:]
    def step():
        with autocast(device, getattr(torch, args.dtype)):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    rss_before = _maxrss_mib()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(round(step(), 5))
        times.append(round(time.perf_counter() - t0, 3))
    out = {"fused_loss": args.fused_loss, "maxrss_before_steps_MiB": round(rss_before), "maxrss_MiB": round(_maxrss_mib()),
           "step_s": times, "loss": losses}
    if device.type == "cuda":
        out["cuda_max_allocated_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        out["step_peak_allocated_MiB"] = round(_profiled_peak(step) / 2**20)
    print(json.dumps(out), flush=True)


def _profiled_peak(fn):
    """The most CPU tensor memory allocated while ``fn`` runs, above what was allocated before."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            events.append((node.start_time_ns, node.typed[1].alloc_size, node.typed[1].total_allocated))
    events.sort()
    return max(total for *_, total in events) - (events[0][2] - events[0][1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--fused_loss", type=lambda s: s == "true", default=None, help=argparse.SUPPRESS)  # the child
    args = p.parse_args()
    if args.fused_loss is not None:
        return child(args)
    import torch

    print(f"# {args.preset}, B={args.batch}, T={args.block}, {args.steps} steps, {args.device}, {args.dtype}; "
          f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"{_cpu_name() if args.device == 'cpu' else torch.cuda.get_device_name()}", flush=True)
    results = {}
    for fused in ("false", "true"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--fused_loss", fused]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"the fused_loss={fused} run failed:\n{out.stderr}")
        line = out.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results[fused] = json.loads(line)
    off, on = results["false"], results["true"]
    key = "cuda_max_allocated_MiB" if "cuda_max_allocated_MiB" in off else "maxrss_MiB"
    print(f"peak {key}: {off[key]} without fused_loss, {on[key]} with (x{on[key] / off[key]:.3f}, "
          f"{off[key] - on[key]} MiB less)")
    if key == "maxrss_MiB":
        grow_off, grow_on = off[key] - off["maxrss_before_steps_MiB"], on[key] - on["maxrss_before_steps_MiB"]
        print(f"growth during the steps: {grow_off} MiB without, {grow_on} MiB with (x{grow_on / grow_off:.3f})")
        a, b = off["step_peak_allocated_MiB"], on["step_peak_allocated_MiB"]
        print(f"tensor memory allocated above the step's start, at its peak: {a} MiB without, {b} MiB with "
              f"(x{b / a:.3f}, {a - b} MiB less)")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
