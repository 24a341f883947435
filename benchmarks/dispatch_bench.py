"""The dispatch benchmark's Python row: the same small-op loop as
build/benchmarks/dispatch_bench (an add of two 1K-float tensors, issued
many times, then a sync), issued from Python through the `coxswain` module,
beside the C++ controller's figures from the same run (this script runs the
C++ benchmark first, with the same --quick or --tiny, and takes its rows
for the same workload on CPU workers). Prints both end-to-end rates and
their ratio. Workers get one intra-op thread each, as the C++ benchmark's do.

    PYTHONPATH=build/python python3 benchmarks/dispatch_bench.py [--build build] [--quick | --tiny] [--json FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# As dispatch_bench gives its workers (they inherit this environment): what
# is measured is dispatch, not kernels.
os.environ["OMP_NUM_THREADS"] = "1"

import coxswain as cx  # noqa: E402

# The C++ rows this compares against: dispatch_bench's
# "add/cpu/workers=N/end_to_end" (bench_util.hpp's common keys).
CPP_CASE = "add/cpu/workers={}/end_to_end"


def python_rates(workers: int, iters: int, rounds: int = 5):
    with cx.Controller.local(workers=workers, device="cpu") as ctl:
        mesh = ctl.mesh({"w": workers})
        a, b = cx.ones(mesh, [1024]), cx.ones(mesh, [1024])
        for _ in range(1000):
            c = a + b
        mesh.sync()
        issue, e2e = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(iters):
                c = a + b
            t1 = time.perf_counter()
            mesh.sync()
            t2 = time.perf_counter()
            issue.append(iters / (t1 - t0))
            e2e.append(iters / (t2 - t0))
        del c
        return sorted(issue)[rounds // 2], sorted(e2e)[rounds // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--json")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--tiny", action="store_true", help="the smallest run (the benchmarks' CTest)")
    a = ap.parse_args()
    mode = ["--tiny"] if a.tiny else ["--quick"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cpp.json")
        subprocess.run([os.path.join(a.build, "benchmarks", "dispatch_bench"), *mode, "--json", path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            cpp = {r["case"]: r for r in json.load(f)}
    workers_run = sorted(int(r["workers"]) for r in cpp.values() if r["case"] == CPP_CASE.format(int(r["workers"])))
    if not workers_run:
        print(f"dispatch_bench.py: dispatch_bench wrote no {CPP_CASE.format('N')!r} rows; it wrote: "
              + ", ".join(sorted(cpp)), file=sys.stderr)
        return 1
    iters = 400 if a.tiny else 2000 if a.quick else 5000
    rows = []
    print("dispatch from Python vs C++: add of two 1K-float tensors, ops/s")
    print(f"{'workers':>8} {'py issue':>12} {'py e2e':>12} {'C++ e2e':>12} {'C++/py':>8}")
    for workers in workers_run:
        issue, e2e = python_rates(workers, iters)
        c = cpp[CPP_CASE.format(workers)]["value"]
        print(f"{workers:>8} {issue:>12.0f} {e2e:>12.0f} {c:>12.0f} {c / e2e:>8.2f}")
        rows.append({"bench": "dispatch", "case": f"add/cpu/workers={workers}/python_end_to_end", "unit": "ops/s",
                     "value": e2e, "baseline": c, "ratio": c / e2e, "workers": workers, "python_issue": issue})
    print("C++/py: how many times faster the C++ controller issues the same loop (1.0 = parity)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
