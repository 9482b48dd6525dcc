#!/usr/bin/env python3
"""The GPU check's bookkeeping (scripts/gpu_check.sh calls it; nothing here needs a GPU).

    python scripts/gpu_summary.py --machine FILE        # the machine and versions, as JSON
    python scripts/gpu_summary.py WORK OUT [render]     # bring OUT up to date

The second form writes OUT/summary.json (every stage's status against its budget, the machine,
the ceilings, the tuning sweep's outcome, the tests' and peers' outcomes with every skip and
its reason, and a short headline) and OUT/logs.tar.gz (WORK/logs plus the ceilings and the
machine file); with ``render`` also OUT/bench.json, bench.md and bench.png from the rows the
benchmarks appended to WORK/bench_rows.jsonl. It runs after every stage, so OUT always holds
what the run has done so far; it imports no torch, so that costs a fraction of a second
(rendering the chart about a second).
"""
import csv
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    """The card, driver and versions this run used (imports torch and triton)."""
    import torch
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton.__version__, "host": platform.node(), "cores": os.cpu_count(), "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(0)), sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), l2_bytes=getattr(props, "L2_cache_size", None))
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
            info["driver"] = q.splitlines()[0] if q else None
        except (OSError, subprocess.SubprocessError) as e:
            info["driver"] = f"unknown ({e})"
    return info


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stages(work):
    try:
        with open(os.path.join(work, "stages.tsv")) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError:
        return []
    for r in rows:
        for k in ("budget", "seconds"):
            r[k] = int(r[k]) if r.get(k, "").lstrip("-").isdigit() else r.get(k)
    return rows


def junit(path):
    """Counts, failures and skips (with reasons) of a junit XML file, or None without one."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": [], "skips": []}
    for suite in root.iter("testsuite"):
        for k in ("tests", "failures", "errors", "skipped"):
            out[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                out["failed"].append(f"{name}: {(el.get('message') or '').splitlines()[0][:300] if el.get('message') else tag}")
        el = case.find("skipped")
        if el is not None:
            out["skips"].append(f"{name}: {(el.get('message') or '')[:400]}")
    return out


def tuning(out_dir):
    """What the sweep's table holds: per kernel, entries and the median speedup over the default."""
    for path in sorted(glob.glob(os.path.join(out_dir, "sm*-*.json"))):
        table = _read_json(path)
        if not isinstance(table, dict) or "kernels" not in table:
            return {"file": os.path.basename(path), "error": "unreadable"}
        kernels = {}
        for name, fam in table["kernels"].items():
            speedups = [e["speedup"] for e in fam["entries"].values() if e.get("speedup")]
            changed = sum(1 for e in fam["entries"].values() if e.get("speedup") and e["timings"] and e["config"] != e["timings"][0][0])
            kernels[name] = {"entries": len(fam["entries"]), "not_default": changed,
                             "median_speedup": round(statistics.median(speedups), 3) if speedups else None,
                             "best_speedup": max(speedups) if speedups else None}
        backends = {op: {key: {"backend": e.get("backend"), "speedup": e.get("speedup")} for key, e in c.get("entries", {}).items()}
                    for op, c in table.get("backends", {}).items() if isinstance(c, dict)}
        prov = table.get("provenance", {})
        return {"file": os.path.basename(path), "device": table.get("device"), "complete": prov.get("complete"),
                "points": prov.get("points"), "elapsed_s": prov.get("elapsed_s"), "kernels": kernels, "backends": backends,
                "rejected": prov.get("rejected", []), "errors": prov.get("errors", [])}
    return None


def bench_rows(work):
    path = os.path.join(work, "bench_rows.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def headline(summary, rows):
    h = {"gpu": (summary.get("machine") or {}).get("gpu"), "elapsed_s": summary["elapsed_s"],
         "stages": {s["stage"]: s["status"] for s in summary["stages"]}}
    tests = summary.get("tests")
    if tests:
        h["tests"] = f"{tests['tests'] - tests['failures'] - tests['errors'] - tests['skipped']} passed, " \
                     f"{tests['failures'] + tests['errors']} failed, {tests['skipped']} skipped"
    if summary.get("tuning"):
        h["tuned_entries"] = {k: v["entries"] for k, v in summary["tuning"].get("kernels", {}).items()}
    e2e = [r["extra_info"] for r in rows if "largest batch" in r["extra_info"].get("group", "")]
    if e2e:
        h["e2e"] = {i["provider"]: {k: i.get(k) for k in ("batch", "tokens/s", "mfu", "peak_mem_MiB", "speedup")} for i in e2e}
    return h


def summarize(work, out, render):
    rows = bench_rows(work)
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": os.environ.get("DRY") == "1",
        "elapsed_s": int(os.environ.get("ELAPSED", "0")),
        "stages": [{"stage": s["stage"], "status": s["status"], "seconds": s["seconds"], "budget": s["budget"],
                    "rc": s["rc"], "note": s["note"]} for s in stages(work)],
        "machine": _read_json(os.path.join(work, "machine.json")),
        "ceilings": _read_json(os.path.join(work, "ceilings.json")),
        "tuning": tuning(out),
        "tests": junit(os.path.join(work, "logs", "tests.xml")),
        "peers": {"measured": sorted({(r["extra_info"].get("group", "").split(" ")[0], r["extra_info"].get("provider"))
                                      for r in rows}),
                  "skipped": sum((j["skips"] for j in (junit(os.path.join(work, "logs", f"{n}.xml")) for n in ("peers", "e2e", "qkv", "mlp")) if j), [])},
        "benchmark_rows": len(rows),
    }
    summary["headline"] = headline(summary, rows)
    _write_json(os.path.join(out, "summary.json"), summary)
    with tarfile.open(os.path.join(out, "logs.tar.gz.tmp"), "w:gz") as tar:
        for path in sorted(glob.glob(os.path.join(work, "logs", "*"))) + [os.path.join(work, n) for n in ("ceilings.json", "machine.json", "stages.tsv")]:
            if os.path.isfile(path):
                tar.add(path, arcname=os.path.join("logs", os.path.basename(path)))
    os.replace(os.path.join(out, "logs.tar.gz.tmp"), os.path.join(out, "logs.tar.gz"))
    if render and rows:
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
        import render as r

        data = r.from_rows(os.path.join(work, "bench_rows.jsonl"))
        _write_json(os.path.join(out, "bench.json"), data)
        with open(os.path.join(out, "bench.md"), "w") as f:
            f.write(r.markdown(data))
        r.chart(data, os.path.join(out, "bench.png"))
    return summary


def _write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def main(argv):
    if argv[:1] == ["--machine"]:
        info = machine()
        _write_json(argv[1], info)
        print(json.dumps(info))
        return 0
    work, out = argv[0], argv[1]
    s = summarize(work, out, render="render" in argv[2:])
    print(f"summary: {len(s['stages'])} stages, {s['benchmark_rows']} benchmark rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
