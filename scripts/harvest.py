#!/usr/bin/env python3
"""After a GPU check: put what it returned into the repository.

    python scripts/harvest.py FILES_AT [--repo ROOT] [--date YYYY-MM-DD] [--allow-dry-run]

FILES_AT is the folder the device tool copied $OUT's files to (summary.json, bench.json,
bench.md, bench.png, the tuning table <sm>-<device>.json, logs.tar.gz). This

  1. copies the tuning table to kernels/tuned/ (checked: well formed, and measured on today's
     kernel sources, else the launchers would ignore it),
  2. writes benchmarks/results/<date>-<gpu>.json (the summary: card, driver, versions,
     ceilings, every stage, tests, tuning, skipped peers; plus every benchmark row), .md (the
     side-by-side tables and the full table) and .png (the speedup chart),
  3. rewrites the README's GPU results (between its gpu-results markers): the side-by-side
     tables, ours against each peer with ratios, and where the tuned configs came from,

and prints the git command that commits them. A dry run's files (scripts/gpu_check.sh
--dry-run) are refused unless --allow-dry-run (tests use it, on a scratch repository).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"
# Whose rows are ours; every other provider of a case is a peer.
OURS = ("triton", "fastgpt_C", "fused+compile", "fused")


def load(files_at):
    def read(name):
        path = os.path.join(files_at, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    summary = read("summary.json")
    if summary is None:
        sys.exit(f"harvest: {files_at} has no summary.json: is it the device tool's files_at folder of a GPU check?")
    tables = sorted(n for n in os.listdir(files_at) if re.fullmatch(r"sm\d+-.+\.json", n))
    return summary, read("bench.json"), tables


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _tuning_module():
    """kernels/tuning.py of this checkout, loaded by path (it imports nothing of fastgpt or torch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fastgpt_tuning", os.path.join(ROOT, "kernels", "tuning.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_table(path):
    """Why the launchers would ignore this table, or None."""
    tuning = _tuning_module()
    with open(path) as f:
        table = json.load(f)
    problem = tuning.validate(table)
    if problem:
        return problem
    stale = [name for name, fam in table["kernels"].items() if fam["source"] != tuning.source_hash(name.split(".")[0])]
    csrc = tuning.csrc_sha256(os.path.join(ROOT, "csrc"))
    stale += [f"backends of {op}" for op, choices in table.get("backends", {}).items() if choices["source"] != csrc]
    if stale:
        return f"measured on other kernel sources than this checkout's ({', '.join(stale)}): re-run the sweep"
    return None


def _fmt(x, digits=3):
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{digits}f}".rstrip("0").rstrip(".")


def side_by_side(bench):
    """Markdown tables: per op, each case's time for ours and every peer, with peer/ours ratios;
    for training, tokens/s, MFU, batch and memory per provider."""
    if not bench:
        return "No benchmark rows came back.\n"
    cases = {}
    for b in bench["benchmarks"]:
        info = b.get("extra_info", {})
        cases.setdefault(info.get("group", b["name"]), {})[info.get("provider", "?")] = (b["stats"]["median"], info)
    out, families = [], {}
    for case, provs in cases.items():
        families.setdefault(case.split(" ")[0], []).append((case, provs))
    for family, rows in families.items():
        if family == "gpt":
            out.append(_training_table(rows))
            continue
        providers = []
        for _, provs in rows:
            providers += [p for p in provs if p not in providers]
        ours = next((p for p in OURS if p in providers), None)
        peers = [p for p in providers if p != ours]
        head = f"| {family} case | {ours or '(ours missing)'} ms | " + " | ".join(f"{p} ms (ratio)" for p in peers) + " |"
        lines = [head, "|---|" + "---:|" * (1 + len(peers))]
        for case, provs in rows:
            t_ours = provs.get(ours, (None, None))[0]
            cells = [_fmt(t_ours * 1e3) if t_ours else "—"]
            for p in peers:
                t = provs.get(p, (None, None))[0]
                cells.append("—" if t is None else f"{_fmt(t * 1e3)} ({t / t_ours:.2f}x)" if t_ours else _fmt(t * 1e3))
            lines.append(f"| {case.removeprefix(family + ' ')} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    note = ("Ratio: the peer's median time over ours, so above 1 ours is faster. — : not run "
            "(see the skipped peers below).\n")
    return note + "\n" + "\n".join(out)


def _training_table(rows):
    lines = []
    for case, provs in rows:
        base = provs.get("reference", (None, {}))[1].get("tokens/s")
        base_c = provs.get("reference+compile", (None, {}))[1].get("tokens/s")
        lines += [f"**{case}**", "", "| provider | batch | tokens/s | vs reference | vs reference+compile | MFU | peak MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for p, (_, info) in provs.items():
            tps = info.get("tokens/s")
            lines.append(f"| {p} | {info.get('batch', '—')} | {_fmt(tps)} | "
                         f"{f'{tps / base:.2f}x' if tps and base else '—'} | {f'{tps / base_c:.2f}x' if tps and base_c else '—'} | "
                         f"{_fmt(info.get('mfu'))} | {_fmt(info.get('peak_mem_MiB'))} |")
        lines.append("")
    return "\n".join(lines)


def machine_line(summary):
    m = summary.get("machine") or {}
    c = summary.get("ceilings") or {}
    parts = [m.get("gpu") or "no GPU (dry run)", f"driver {m.get('driver', '?')}", f"torch {m.get('torch', '?')}",
             f"CUDA {m.get('cuda', '?')}", f"triton {m.get('triton', '?')}", f"Python {m.get('python', '?')}"]
    line = ", ".join(parts) + f"; {summary.get('date', '?')}"
    if c.get("matmul_flops"):
        line += (f". Measured ceilings: {c['matmul_flops'] / 1e12:.0f} TFLOP/s ({c.get('matmul')}), "
                 f"{c['copy_bytes_per_s'] / 1e12:.2f} TB/s copy ({c.get('copy')}){' ' + c['note'] if c.get('note') else ''}")
    return line


def tuning_provenance(summary, table_name):
    t = summary.get("tuning")
    if not t or not table_name:
        return "No tuning table came back: the launchers keep their default configs.\n"
    pts = t.get("points") or {}
    lines = [f"Tuned configs: `kernels/tuned/{table_name}`, swept by `scripts/tune.py` in this run "
             f"({pts.get('done', '?')} of {pts.get('total', '?')} points{'' if t.get('complete') else ', cut by its time budget'}, "
             f"{t.get('elapsed_s', '?')} s). Per kernel: entries, how many differ from the default, and the median and best "
             "speedup over the default config:", "",
             "| kernel | entries | not the default | median speedup | best |", "|---|---:|---:|---:|---:|"]
    for k, v in t.get("kernels", {}).items():
        lines.append(f"| {k} | {v['entries']} | {v['not_default']} | {_fmt(v['median_speedup'])} | {_fmt(v['best_speedup'])} |")
    if t.get("rejected"):
        lines += ["", f"{len(t['rejected'])} fastest candidates failed the reference check and were passed over "
                  "(listed in the results JSON)."]
    return "\n".join(lines) + "\n"


def skipped_peers(summary):
    """The peers that did not run, one line per reason (pytest's skip messages) with its case count."""
    reasons = {}
    for s in (summary.get("peers") or {}).get("skipped") or []:
        case, _, why = s.partition(": ")
        reasons.setdefault(why, []).append(case.split("::")[-1])
    if not reasons:
        return ""
    return "Peers not measured, and why:\n\n" + "\n".join(
        f"- {why} ({len(cases)} case{'s' if len(cases) > 1 else ''}, e.g. `{cases[0]}`)" for why, cases in reasons.items()) + "\n"


def stages_line(summary):
    tests = (summary.get("headline") or {}).get("tests")
    stages = []
    for s in summary.get("stages", []):
        took = s["seconds"] if isinstance(s["seconds"], int) and s["seconds"] else None
        stages.append(f"{s['stage']} {s['status']}" + (f" ({took} s)" if took else ""))
    return ((f"Tests on this machine: {tests}. " if tests else "") + "Stages: " + ", ".join(stages)
            + f"; {summary.get('elapsed_s', '?')} s in all.\n")


def harvest(files_at, repo, date=None, allow_dry_run=False):
    summary, bench, tables = load(files_at)
    if summary.get("dry_run") and not allow_dry_run:
        sys.exit("harvest: these are a dry run's files (scripts/gpu_check.sh --dry-run), not measurements; "
                 "--allow-dry-run harvests them anyway (into a scratch repository)")
    gpu = (summary.get("machine") or {}).get("gpu") or ("cpu-dry-run" if summary.get("dry_run") else "unknown")
    date = date or summary.get("date", datetime.date.today().isoformat())[:10]
    stem = f"{date}-{slug(gpu)}"
    written = []

    table_name = None
    if len(tables) > 1:
        sys.exit(f"harvest: more than one tuning table in {files_at}: {tables}")
    if tables:
        problem = check_table(os.path.join(files_at, tables[0]))
        if problem:
            sys.exit(f"harvest: the tuning table {tables[0]} would be ignored by the launchers: {problem}")
        table_name = tables[0]
        dest = os.path.join(repo, "kernels", "tuned")
        os.makedirs(dest, exist_ok=True)
        shutil.copyfile(os.path.join(files_at, table_name), os.path.join(dest, table_name))
        written.append(os.path.join("kernels", "tuned", table_name))

    results = os.path.join(repo, "benchmarks", "results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, stem + ".json"), "w") as f:
        json.dump({"summary": summary, "bench": bench}, f, indent=1)
        f.write("\n")
    written.append(os.path.join("benchmarks", "results", stem + ".json"))

    section = "\n".join([
        f"**GPU: {gpu}** — {machine_line(summary)}.", "",
        stages_line(summary),
        side_by_side(bench),
        skipped_peers(summary),
        tuning_provenance(summary, table_name),
        f"Full table, chart and JSON: `benchmarks/results/{stem}.{{md,png,json}}`; produced by `scripts/gpu_check.sh` "
        f"and `scripts/harvest.py`.",
    ])
    full = ""
    if os.path.exists(os.path.join(files_at, "bench.md")):
        with open(os.path.join(files_at, "bench.md")) as f:
            full = "\n## Every benchmark row\n\n" + f.read()
    with open(os.path.join(results, stem + ".md"), "w") as f:
        f.write(f"# GPU check, {date}, {gpu}\n\n{section}\n{full}")
    written.append(os.path.join("benchmarks", "results", stem + ".md"))
    if os.path.exists(os.path.join(files_at, "bench.png")):
        shutil.copyfile(os.path.join(files_at, "bench.png"), os.path.join(results, stem + ".png"))
        written.append(os.path.join("benchmarks", "results", stem + ".png"))

    readme = os.path.join(repo, "README.md")
    with open(readme) as f:
        text = f.read()
    if START not in text or END not in text:
        sys.exit(f"harvest: {readme} lacks the {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as f:
        f.write(f"{head}{START}\n{section}\n{END}{tail}")
    written.append("README.md")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files_at")
    p.add_argument("--repo", default=ROOT)
    p.add_argument("--date", help="the results' date (default: the run's)")
    p.add_argument("--allow-dry-run", action="store_true")
    args = p.parse_args(argv)
    written = harvest(args.files_at, args.repo, args.date, args.allow_dry_run)
    print("harvest: wrote\n  " + "\n  ".join(written))
    print(f"then: git -C {args.repo} add {' '.join(written)} && git -C {args.repo} commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
