"""Draws the benchmarks' JSON results (benchmarks/run-all) as PNG files:
collectives busbw against size, the busbw ratio against size, and the
training step time against model size."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(out, name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else []


def collectives(out):
    rows = [r for r in load(out, "collectives_bench") if r["case"].endswith("/busbw")]
    if not rows:
        return
    ops = sorted({r["case"].split("/")[0] for r in rows})
    fig, (bw, ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
    for op in ops:
        pts = sorted((r["bytes"], r["value"], r["baseline"], r["ratio"]) for r in rows if r["case"].startswith(op + "/"))
        sizes = [p[0] for p in pts]
        line = bw.plot(sizes, [p[1] for p in pts], marker="o", label=op + " (Coxswain)")[0]
        bw.plot(sizes, [p[2] for p in pts], linestyle="--", color=line.get_color(), label=op + " (raw Gloo)")
        ratio.plot(sizes, [p[3] for p in pts], marker="o", label=op)
    for ax in (bw, ratio):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size per rank (bytes)")
        ax.grid(True, alpha=0.3)
    bw.set_yscale("log")
    bw.set_ylabel("busbw (GB/s)")
    bw.set_title("collectives: busbw")
    bw.legend(fontsize=7)
    ratio.axhline(1.0, color="black", linewidth=0.8)
    ratio.axhline(0.95, color="gray", linestyle=":", linewidth=0.8)
    ratio.set_ylabel("Coxswain busbw / raw busbw")
    ratio.set_title("collectives: ratio to raw Gloo")
    ratio.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "collectives.png"), dpi=120)


def training(out):
    rows = load(out, "training_bench")
    if not rows:
        return
    pts = sorted((r["params"], r["value"], r["baseline"], r["ratio"]) for r in rows)
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
    out = sys.argv[1]
    collectives(out)
    training(out)
    print("plots:", ", ".join(sorted(f for f in os.listdir(out) if f.endswith(".png"))))


if __name__ == "__main__":
    main()
