"""Render a `pytest benchmarks/ --benchmark-json=FILE` result as a Markdown table and a PNG chart.

    python benchmarks/render.py results.json [--md out.md] [--png out.png]
    python benchmarks/render.py rows.jsonl --json results.json ...   # FASTGPT_BENCH_ROWS rows

The table has one row per case and provider (median time and the throughput figures the
benchmarks recorded); the chart shows each case's speedup over its baseline provider. A
``.jsonl`` input holds the rows benchutil appends as each case is measured (the GPU check's
record, which survives a stopped run); ``--json`` writes them as a results file.
"""
import argparse
import datetime
import json
import platform
import sys

COLUMNS = ["median ms", "tokens/s", "TFLOP/s", "GB/s", "frac_peak_flops", "frac_peak_bw", "speedup", "mfu", "peak_mem_MiB", "batch"]


def rows(data):
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        yield {
            "case": info.get("group", b["name"]),
            "provider": info.get("provider", ""),
            "median ms": round(b["stats"]["median"] * 1e3, 3),
            **{k: info[k] for k in COLUMNS if k in info},
        }


def markdown(data):
    machine = data.get("machine_info", {})
    devices = {b.get("extra_info", {}).get("device", "?") for b in data["benchmarks"]}
    head = (f"Device: {', '.join(sorted(devices))}; host {machine.get('node', '?')} ({machine.get('cpu', {}).get('brand_raw', '?')}); "
            f"run {data.get('datetime', '?')}")
    lines = [head, "", "| case | provider | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for r in rows(data):
        lines.append(f"| {r['case']} | {r['provider']} | " + " | ".join(str(r.get(k, "")) for k in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def chart(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(f"{r['case']} [{r['provider']}]", r["speedup"]) for r in rows(data) if "speedup" in r]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(pts) + 1.5))
    ax.barh([p[0] for p in pts], [p[1] for p in pts], color=["tab:green" if p[1] >= 1 else "tab:red" for p in pts])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speedup over the baseline provider")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def _cpu_brand():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def from_rows(path):
    """A results file's fields (the ones this module reads) from a FASTGPT_BENCH_ROWS file."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {
        "machine_info": {"node": platform.node(), "cpu": {"brand_raw": _cpu_brand()}},
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "benchmarks": [{"name": r["name"], "stats": {"median": r["median_s"]}, "extra_info": r["extra_info"]} for r in rows],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--md")
    p.add_argument("--png")
    p.add_argument("--json", dest="out_json", help="write the results file (for a .jsonl input)")
    args = p.parse_args(argv)
    try:
        data = from_rows(args.json) if args.json.endswith(".jsonl") else json.load(open(args.json))
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"render: cannot read {args.json}: {e}")
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(data, f, indent=1)
    md = markdown(data)
    if args.md:
        open(args.md, "w").write(md)
    else:
        print(md)
    if args.png and not chart(data, args.png):
        print("render: no speedups recorded, no chart written", file=sys.stderr)


if __name__ == "__main__":
    main()
