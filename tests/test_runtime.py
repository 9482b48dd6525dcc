"""fastgpt.runtime: devices, CPU threads, the allocator setting."""
import subprocess
import sys

import pytest
import torch

from fastgpt import GPT, GPTConfig
from fastgpt.runtime import ThreadTuner
from helpers import error_of, tiny


@pytest.mark.parametrize("device,expected", [("cuda:7", "does not exist"), ("tpu", "unknown device"), ("meta", "not supported")])
def test_device_that_does_not_exist(text_file, data_dir, tmp_path, device, expected):
    argv = tiny(text_file, data_dir, tmp_path / "o")
    argv[argv.index("--device") + 1] = device
    msg = error_of(argv)
    assert expected in msg and ("--device" in msg or "pick one" in msg), msg
    assert not (tmp_path / "o").exists()


def test_thread_tuner_measures_and_keeps_the_fastest():
    tuner = ThreadTuner(4, every=50, window=2, skip=1)
    assert tuner.candidates == [1, 2, 4] and tuner.threads_for(0) == 1  # one thread until measured

    def run(cost, ks):
        used = []
        for k in ks:
            n = tuner.threads_for(k)
            used.append(n)
            tuner.record(k, n, cost[n])
        return used

    used = run({1: 0.2, 2: 0.1, 4: 0.5}, range(61))  # four threads on busy cores: slowest
    assert used[:8] == [1, 1, 1, 2, 2, 4, 2, 2]  # 4 dropped after one slow iteration
    assert used[8:56] == [2] * 48 and used[56:61] == [1, 1, 2, 2, 4]  # measured again 50 iterations later
    assert tuner.best == 2
    used = run({1: 0.2, 2: 1.0, 4: 2.0}, range(61, 72))  # the machine got busy: measure again at once
    assert used == [2, 2, 2, 1, 1, 2, 4, 1, 1, 1, 1] and tuner.best == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_per_step_page_faults():
    """On a fresh process: a training step's large activation buffers page-fault every step
    until keep_freed_memory() keeps freed blocks in the heap (counted with getrusage)."""
    code = r"""
import resource, torch
from fastgpt import GPT
from fastgpt.runtime import keep_freed_memory
torch.set_num_threads(1)
m = GPT.from_preset("shakespeare-char-small")
x = torch.randint(0, 84, (12, 64))
def faults(n=8):
    for _ in range(2):
        m(x, x)[1].backward()
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        m(x, x)[1].backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / n
before = faults()
assert keep_freed_memory()
print(before, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, after = map(float, out.stdout.split())
    assert before > 100, f"expected the default allocator to fault every step, got {before}/step"
    assert after < before / 4, (before, after)


@pytest.mark.parametrize("bias", [False, True])
def test_cpu_training_numbers_do_not_depend_on_the_thread_count(bias):
    """The thread tuner changes the thread count between iterations and between runs: every
    gradient must come out bit-identical at any count (and equal to nanoGPT's F.layer_norm at
    one thread), or resumed and repeated runs drift apart."""
    config = GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=bias, dropout=0.1)
    model = GPT(config)
    idx = torch.randint(0, 65, (12, 64))
    threads = torch.get_num_threads()

    def grads(n):
        torch.set_num_threads(n)
        torch.manual_seed(0)
        model.zero_grad(set_to_none=True)
        _, loss = model(idx, idx)
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}

    try:
        (loss1, g1), (loss3, g3) = grads(1), grads(3)
    finally:
        torch.set_num_threads(threads)
    assert loss1 == loss3
    assert [k for k in g1 if not torch.equal(g1[k], g3[k])] == []


def test_cpu_mfu_counts_all_the_cores_the_run_has():
    """MFU's denominator is every core the process has, not the thread count the tuner runs at the
    moment: the same throughput gives the same MFU, and no more than all of them is ever claimed."""
    import torch

    from fastgpt.hardware import CPU_CORE_FLOPS
    from fastgpt.runtime import Distributed, Runtime

    tuned = Runtime(torch.device("cpu"), torch.float32, Distributed(), threads=1, tuner=ThreadTuner(2))
    assert tuned.cores == 2 and tuned.peak_flops == 2 * CPU_CORE_FLOPS
    tuned.tuner.best = 2
    assert tuned.peak_flops == 2 * CPU_CORE_FLOPS
    assert Runtime(torch.device("cpu"), torch.float32, Distributed(), threads=3).peak_flops == 3 * CPU_CORE_FLOPS
    rt = Runtime.start("cpu", "float32", Distributed(), threads=0)  # tuned among this machine's cores
    assert rt.cores == max(rt.tuner.candidates) >= rt.threads


def test_quiet_exits():
    code = ("import sys, time\nfrom fastgpt.runtime import quiet_exits\n"
            "with quiet_exits():\n    print('x' * 100000)\n    for i in range(1000):\n        print(i)\n"
            "    raise KeyboardInterrupt\n")
    piped = subprocess.run(f"{sys.executable} -c \"{code}\" | head -c 10", shell=True, capture_output=True, text=True, timeout=120)
    assert piped.stderr == "", piped.stderr  # a closed pipe: no BrokenPipeError traceback
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 130 and "Traceback" not in out.stderr
