"""The dispatch benchmark's Python row: the same small-op loop as
build/benchmarks/dispatch_bench (an add of two 1K-float tensors, issued
many times, then a sync), issued from Python through the `coxswain` module,
beside the C++ controller's figures from the same run (this script runs the
C++ benchmark first). Prints both end-to-end rates and their ratio.

    PYTHONPATH=build/python python3 benchmarks/dispatch_bench.py [--build build] [--json FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import coxswain as cx


def python_rates(workers: int, iters: int, rounds: int = 5):
    with cx.Controller.local(workers=workers) as ctl:
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
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cpp.json")
        subprocess.run([os.path.join(a.build, "benchmarks", "dispatch_bench"), "--quick", "--json", path],
                       check=True, stdout=subprocess.DEVNULL)
        cpp = {r["case"]: r for r in json.load(open(path))}
    rows = []
    print("dispatch from Python vs C++: add of two 1K-float tensors, ops/s")
    print(f"{'workers':>8} {'py issue':>12} {'py e2e':>12} {'C++ e2e':>12} {'C++/py':>8}")
    for workers in (1, 4):
        issue, e2e = python_rates(workers, 2000 if a.quick else 5000)
        c = cpp[f"add/workers={workers}/end_to_end"]["value"]
        print(f"{workers:>8} {issue:>12.0f} {e2e:>12.0f} {c:>12.0f} {c / e2e:>8.2f}")
        rows.append({"bench": "dispatch", "case": f"add/workers={workers}/python_end_to_end", "unit": "ops/s",
                     "value": e2e, "baseline": c, "ratio": c / e2e, "python_issue": issue})
    print("C++/py: how many times faster the C++ controller issues the same loop (1.0 = parity)")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
