"""benchmarks/render.py turns --benchmark-json output, or the rows benchutil appends as it
measures (FASTGPT_BENCH_ROWS), into a Markdown table and a PNG chart."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_render(tmp_path):
    data = {"datetime": "2026-11-28", "machine_info": {"node": "n", "cpu": {"brand_raw": "cpu"}}, "benchmarks": [
        {"name": "a", "stats": {"median": 2e-3}, "extra_info": {"group": "gpt train", "provider": "reference", "device": "X", "tokens/s": 100}},
        {"name": "b", "stats": {"median": 1e-3}, "extra_info": {"group": "gpt train", "provider": "fused", "device": "X", "tokens/s": 200, "speedup": 2.0}},
    ]}
    src = tmp_path / "r.json"
    src.write_text(json.dumps(data))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "render.py"), str(src), "--md", str(tmp_path / "r.md"),
                          "--png", str(tmp_path / "r.png")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "r.md").read_text()
    assert "| gpt train | fused | 1.0 | 200 |" in md and "Device: X" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_rows(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"name": "a", "median_s": 0.5, "extra_info": {"group": "gpt train T=1024 largest batch", "provider": "reference", "device": "X",
                                                       "tokens/s": 65536, "batch": 32}},
        {"name": "b", "median_s": 0.25, "extra_info": {"group": "gpt train T=1024 largest batch", "provider": "fused", "device": "X",
                                                        "tokens/s": 262144, "batch": 64, "speedup": 4.0}},
    ]))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "render.py"), str(rows), "--json", str(tmp_path / "r.json"),
                          "--md", str(tmp_path / "r.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert [b["stats"]["median"] for b in data["benchmarks"]] == [0.5, 0.25] and data["machine_info"]["node"]
    assert "| gpt train T=1024 largest batch | fused | 250.0 | 262144 |" in (tmp_path / "r.md").read_text()
    assert "| 4.0 |  |  | 64 |" in (tmp_path / "r.md").read_text()
