"""fastgpt.runlog: batched log.csv writes, a progress bar only on a terminal, MFU, Weights & Biases."""
import io
import os
import sys
import types

import pytest

from fastgpt.runlog import RunLog, read_log, wandb_run


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _log(tmp_path, stream, **kw):
    return RunLog(str(tmp_path), active=True, start=0, max_iters=50, tokens_per_iter=1000, flops_per_iter=2e9, peak_flops=1e11,
                  progress=True, log_interval=10, stream=stream, **kw)


def test_piped_output_gets_plain_lines_and_rows_are_written_in_batches(tmp_path):
    out = io.StringIO()
    with _log(tmp_path, out) as log:
        for it in range(25):
            log.step(it, 2.0, 1e-3, 0.04)
        assert read_log(tmp_path / "log.csv") == []  # buffered: no file write per iteration
        log.eval(25, {"train": 1.9, "val": 2.1}, 1e-3, 1.0)
        assert len(read_log(tmp_path / "log.csv")) == 25  # written before the evaluation's row
        for it in range(25, 30):
            log.step(it, 2.0, 1e-3, 0.04)
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["iter"]) for r in rows] == list(range(30))
    assert float(rows[-1]["mfu"]) == pytest.approx(2e9 / 0.04 / 1e11) and float(rows[-1]["tokens_per_s"]) == pytest.approx(25000)
    text = out.getvalue()
    assert "\r" not in text and "it/s" not in text  # no progress bar
    assert [line.split(":")[0] for line in text.splitlines() if "loss 2.0000" in line] == ["iter 0", "iter 10", "iter 20"]
    assert "iter 25: train loss 1.9000, val loss 2.1000" in text


def test_terminal_gets_the_progress_bar(tmp_path):
    term = Terminal()
    with _log(tmp_path, term) as log:
        for it in range(20):
            log.step(it, 2.0, 1e-3, 0.04)
        log.write("a message")
    text = term.getvalue()
    assert "20/50" in text and "a message" in text and "iter 10: loss" not in text
    assert len(read_log(tmp_path / "log.csv")) == 20


def test_weights_and_biases(tmp_path, monkeypatch):
    calls = []
    run = types.SimpleNamespace(log=lambda d: calls.append(d), finish=lambda: calls.append("finish"))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw) or run))
    notes = []
    w = wandb_run(True, "proj", "name", {"lr": 1}, notes.append)
    assert calls == [{"project": "proj", "name": "name", "config": {"lr": 1}}] and notes == []
    with _log(tmp_path, io.StringIO(), wandb=w) as log:
        log.eval(0, {"train": 2.0, "val": 2.5}, 1e-3, 0.0)
    assert calls[1]["val/loss"] == 2.5 and calls[1]["iter"] == 0 and calls[-1] == "finish"
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    assert wandb_run(True, "proj", "name", {}, notes.append) is None
    assert "wandb package is not installed" in notes[0]
    assert wandb_run(False, "proj", "name", {}, notes.append) is None and len(notes) == 1


def test_inactive_log_writes_nothing(tmp_path):
    with RunLog(str(tmp_path / "o"), active=False, start=0, max_iters=5, tokens_per_iter=1, flops_per_iter=1, peak_flops=1,
                progress=True, log_interval=1) as log:
        log.step(0, 1.0, 1e-3, 0.1)
    assert not os.path.exists(tmp_path / "o")


def test_loss_png_is_drawn_in_another_process(tmp_path):
    """plot_in_background: the child runs runlog.py alone (no torch import) and reports back;
    a failure comes back as a note, not an exception or silence."""
    pytest.importorskip("matplotlib")
    with _log(tmp_path, io.StringIO()) as log:
        for it in range(5):
            log.step(it, 2.0 - it / 10, 1e-3, 0.04)
        log.eval(5, {"train": 1.9, "val": 2.1}, 1e-3, 1.0)
    wait = log.plot_in_background()
    assert wait() is None
    with open(tmp_path / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    os.remove(tmp_path / "log.csv")
    note = log.plot_in_background()()
    assert note.startswith("loss.png could not be drawn: FileNotFoundError") and "log.csv" in note
