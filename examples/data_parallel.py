"""Data-parallel training from Python: the loop of examples/data_parallel.cpp
(an MLP learns a random teacher's labels; gradients averaged over "dp" in one
bucket; fused AdamW), driven through the `coxswain` module.

    PYTHONPATH=build/python python3 examples/data_parallel.py [--workers 4] [--steps 300]
"""
import argparse
import math
import sys
import time

import coxswain as cx


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--log-every", type=int, default=25)
    a = ap.parse_args()
    inputs, classes = 32, 10
    with cx.Controller.local(workers=a.workers) as ctl:
        mesh = ctl.mesh({"dp": a.workers})
        mesh.manual_seed(1)
        teacher = [cx.randn(mesh, [inputs, 16]) * (1 / math.sqrt(inputs)), cx.randn(mesh, [16, classes]) * 0.75]
        sizes = [(inputs, a.hidden), (a.hidden, a.hidden), (a.hidden, classes)]
        params = []
        for fan_in, fan_out in sizes:
            params += [(cx.randn(mesh, [fan_in, fan_out]) * (1 / math.sqrt(fan_in))).requires_grad_(),
                       cx.zeros(mesh, [fan_out]).requires_grad_()]
        m = [cx.zeros(mesh, p.shape) for p in params]
        v = [cx.zeros(mesh, p.shape) for p in params]
        first, smoothed, t0 = None, None, time.time()
        for step in range(a.steps):
            mesh.manual_seed(1000003 + step + 1, per_rank=True)
            x = cx.randn(mesh, [a.batch, inputs])
            with cx.no_grad(mesh):
                y = (cx.tanh(x @ teacher[0]) @ teacher[1]).argmax(1)
            h = x
            for i in range(0, len(params), 2):
                h = h @ params[i] + params[i + 1]
                if i + 2 < len(params):
                    h = cx.gelu(h)
            loss = cx.cross_entropy(h, y)
            loss.backward()
            flat = cx.flatten([p.grad() for p in params])  # one bucket, one op
            cx.all_reduce_(flat, ["dp"], cx.Reduce.Avg)
            grads, at = [], 0
            for p in params:
                n = p.numel()
                grads.append(flat.narrow(0, at, n).view(p.shape))
                at += n
                p.grad().zero_()
            warm = max(1.0, 0.05 * a.steps)
            lr = a.lr * (step + 1) / warm if step < warm else \
                a.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1.0, a.steps - warm))))
            with cx.no_grad(mesh):
                cx.fused_adamw_(params, grads, m, v, lr=lr, weight_decay=0.01, step=step + 1)
            if step % a.log_every == 0 or step + 1 == a.steps:
                value = cx.all_reduce(loss.detach(), [], cx.Reduce.Avg).item()
                first = value if first is None else first
                smoothed = value if smoothed is None else 0.5 * smoothed + 0.5 * value
                print(f"step {step:5d}  loss {value:.4f}  lr {lr:.2e}", flush=True)
        secs = time.time() - t0
        print(f"done: {a.steps} steps in {secs:.1f} s ({a.steps * a.batch * a.workers / secs:.0f} samples/s); "
              f"loss {first:.4f} -> {smoothed:.4f} (target {a.target:.2f})")
        if not smoothed <= a.target:
            print(f"data_parallel.py: the loss did not reach the target {a.target}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
