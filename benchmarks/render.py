"""Render a `pytest benchmarks/ --benchmark-json=FILE` result as a Markdown table and a PNG chart.

    python benchmarks/render.py results.json [--md out.md] [--png out.png]

The table has one row per case and provider (median time and the throughput figures the
benchmarks recorded); the chart shows each case's speedup over its baseline provider.
"""
import argparse
import json
import sys

COLUMNS = ["median ms", "tokens/s", "TFLOP/s", "GB/s", "frac_peak_flops", "frac_peak_bw", "speedup", "mfu", "peak_mem_MiB"]


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--md")
    p.add_argument("--png")
    args = p.parse_args(argv)
    try:
        data = json.load(open(args.json))
    except (OSError, ValueError) as e:
        sys.exit(f"render: cannot read {args.json}: {e}")
    md = markdown(data)
    if args.md:
        open(args.md, "w").write(md)
    else:
        print(md)
    if args.png and not chart(data, args.png):
        print("render: no speedups recorded, no chart written", file=sys.stderr)


if __name__ == "__main__":
    main()
