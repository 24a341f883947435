"""Draws the benchmarks' JSON results (benchmarks/run-all) as PNG files:
collectives busbw and its ratio against size, the training step time against
model size, and the bulk transfer rates (messaging_bench) against size.

    plot.py OUTDIR           draws OUTDIR/*.png (needs matplotlib)
    plot.py --check OUTDIR   draws nothing and needs no matplotlib: checks
                             that every row of OUTDIR/*.json carries the
                             common keys (bench_util.hpp) and that every
                             series drawn here can be read from them
"""
import json
import os
import sys

# Every row has these; "baseline" and "ratio" come together where the
# benchmark has a baseline from the same run.
COMMON = ("bench", "case", "value", "unit")
PAIRED = ("baseline", "ratio")


def load(out, name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


# --- the series, read without matplotlib -------------------------------------


def collectives_series(out):
    """{op: [(bytes, busbw, raw busbw, ratio), ...]} sorted by size."""
    rows = [r for r in load(out, "collectives_bench") if r["case"].endswith("/busbw")]
    ops = sorted({r["case"].split("/")[0] for r in rows})
    return {op: sorted((r["bytes"], r["value"], r["baseline"], r["ratio"]) for r in rows
                       if r["case"].startswith(op + "/")) for op in ops}


def training_series(out):
    """[(params, step ms, SPMD step ms, ratio), ...] sorted by model size."""
    return sorted((r["params"], r["value"], r["baseline"], r["ratio"]) for r in load(out, "training_bench"))


def bulk_series(out):
    """{op: [(bytes, GB/s, raw GB/s, ratio), ...]} from messaging_bench's bulk rows."""
    rows = [r for r in load(out, "messaging_bench") if r["case"].startswith("bulk/")]
    ops = sorted({r["case"].split("/")[1] for r in rows})
    return {op: sorted((r["bytes"], r["value"], r["baseline"], r["ratio"]) for r in rows
                       if r["case"].split("/")[1] == op) for op in ops}


def check(out):
    """Problems with OUTDIR/*.json, as lines; none: an empty list."""
    problems = []
    names = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    if not names:
        problems.append(f"no JSON files in {out}")
    for name in names:
        try:
            with open(os.path.join(out, name)) as f:
                rows = json.load(f)
        except ValueError as e:
            problems.append(f"{name}: not JSON: {e}")
            continue
        if not isinstance(rows, list) or not rows:
            problems.append(f"{name}: not a non-empty array of rows")
            continue
        for i, r in enumerate(rows):
            missing = [k for k in COMMON if k not in r]
            if missing:
                problems.append(f"{name} row {i} ({r.get('case', '?')}): no {', '.join(missing)}")
            elif not isinstance(r["value"], (int, float)):
                problems.append(f"{name} row {i} ({r['case']}): value {r['value']!r} is not a number")
            if sum(k in r for k in PAIRED) == 1:
                problems.append(f"{name} row {i} ({r.get('case', '?')}): baseline and ratio must come together")
    for series in (collectives_series, training_series, bulk_series):
        try:
            series(out)
        except (KeyError, TypeError, IndexError) as e:
            problems.append(f"{series.__name__}: a row lacks {e}")
    return problems


# --- drawing -----------------------------------------------------------------


def draw(out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def versus_size(series, xlabel, ylabel, title, ratio_label, aim, baseline_name, name, log_y):
        if not series:
            return
        fig, (val, ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
        for op, pts in series.items():
            sizes = [p[0] for p in pts]
            line = val.plot(sizes, [p[1] for p in pts], marker="o", label=op + " (Coxswain)")[0]
            val.plot(sizes, [p[2] for p in pts], linestyle="--", color=line.get_color(),
                     label=f"{op} ({baseline_name})")
            ratio.plot(sizes, [p[3] for p in pts], marker="o", label=op)
        for ax in (val, ratio):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.grid(True, alpha=0.3)
        if log_y:
            val.set_yscale("log")
        val.set_ylabel(ylabel)
        val.set_title(title)
        val.legend(fontsize=7)
        ratio.axhline(1.0, color="black", linewidth=0.8)
        ratio.axhline(aim, color="gray", linestyle=":", linewidth=0.8)
        ratio.set_ylabel(ratio_label)
        ratio.set_title(f"{title}: ratio to {baseline_name}")
        ratio.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=120)

    versus_size(collectives_series(out), "size per rank (bytes)", "busbw (GB/s)", "collectives",
                "Coxswain busbw / raw busbw", 0.95, "raw Gloo", "collectives.png", log_y=True)
    versus_size(bulk_series(out), "shard size (bytes)", "GB/s", "bulk transfers", "Coxswain rate / raw rate", 0.9,
                "raw Asio", "bulk.png", log_y=False)

    pts = training_series(out)
    if pts:
        fig, (t, ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
        params = [p[0] for p in pts]
        t.plot(params, [p[1] for p in pts], marker="o", label="Coxswain (one controller)")
        t.plot(params, [p[2] for p in pts], marker="s", label="hand-written SPMD")
        t.set_ylabel("step time (ms)")
        t.set_title("data-parallel step")
        t.legend()
        ratio.plot(params, [p[3] for p in pts], marker="o")
        ratio.axhline(1.0, color="black", linewidth=0.8)
        ratio.set_ylabel("step time ratio (Coxswain / SPMD)")
        ratio.set_title("price of the single controller")
        for ax in (t, ratio):
            ax.set_xscale("log")
            ax.set_xlabel("model parameters")
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "training.png"), dpi=120)


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--check":
        problems = check(args[1])
        for p in problems:
            print("plot.py --check:", p, file=sys.stderr)
        if problems:
            return 1
        print("plot.py --check: every row carries the common keys; every plotted series reads")
        return 0
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = args[0]
    draw(out)
    print("plots:", ", ".join(sorted(f for f in os.listdir(out) if f.endswith(".png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
