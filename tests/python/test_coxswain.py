"""The Python binding on real CPU workers: mesh algebra, ops against local
torch, collectives, errors, and that no worker outlives its interpreter."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import coxswain as cx


@pytest.fixture(scope="module")
def ctl():
    with cx.Controller.local(workers=4) as c:
        yield c


def test_mesh_algebra(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    assert mesh.names == ["dp", "tp"] and mesh.sizes == [2, 2] and mesh.ranks == [0, 1, 2, 3]
    row = mesh.slice("dp", 1)
    assert row.names == ["tp"] and row.ranks == [2, 3]
    assert mesh.flatten("w").ranks == [0, 1, 2, 3]
    split = ctl.mesh([("w", 4)]).split("w", ["a", "b"], [2, 2])
    assert split == mesh.rename("dp", "a").rename("tp", "b")
    assert mesh.slice("tp", 0, 2, 2).sizes == [2, 1]


def test_mesh_views_groups_and_ranks(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    t = mesh.transpose("dp", "tp")
    assert t.names == ["tp", "dp"] and t.ranks == [0, 2, 1, 3]
    assert mesh.permute(["tp", "dp"]) == t
    assert mesh.groups(["dp"]) == [[0, 2], [1, 3]] and t.groups() == [[0, 2, 1, 3]]
    g, r = cx.global_rank(t), cx.mesh_rank(t)
    assert g.fetch([1, 0]).item() == 1 and r.fetch([1, 0]).item() == 2
    with pytest.raises(cx.InvalidArgument, match="no dim 'pp'"):
        mesh.groups(["pp"])


def test_ops_match_local_torch(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    torch.manual_seed(0)
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    ra, rb = cx.from_local(mesh, a), cx.from_local(mesh, b)
    out = cx.relu(ra @ rb) * 2.0 + 1.0
    assert out.shape == [4, 3] and out.dtype == torch.float32
    for shard in out.fetch_all(timeout=30):
        torch.testing.assert_close(shard, torch.relu(a @ b) * 2 + 1)
    s = cx.call_op("aten::addmm", "", [cx.zeros(mesh, [4, 3]), ra, rb, 1, 2])[0]
    torch.testing.assert_close(s.fetch({"dp": 1, "tp": 1}), 2 * (a @ b))
    assert (ra.sum() - float(a.sum())).abs().item() < 1e-4
    values, indices = ra.max(1)
    torch.testing.assert_close(values.fetch([0, 0]), a.max(1).values)
    assert indices.fetch([1, 0]).tolist() == a.max(1).indices.tolist()
    assert ra.permute([1, 0]).shape == [5, 4]
    picked = ra.index_select(0, cx.from_local(mesh, torch.tensor([3, 0])))
    torch.testing.assert_close(picked.fetch({"dp": 0, "tp": 1}), a[[3, 0]])


def test_autograd_and_no_grad(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    w = cx.ones(mesh, [3, 1], requires_grad=True)
    x = cx.from_local(mesh, torch.arange(6.0).view(2, 3))
    (x @ w).sum().backward()
    torch.testing.assert_close(w.grad().fetch([0, 0]), torch.arange(6.0).view(2, 3).sum(0, keepdim=True).t())
    with cx.no_grad(mesh):
        assert not (w * 2.0).requires_grad


def test_collectives(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    rank = cx.coordinate(mesh, "dp").to(torch.float32) * 2.0 + cx.coordinate(mesh, "tp").to(torch.float32)
    total = cx.all_reduce(rank.view([1]), ["dp", "tp"])
    assert [t.item() for t in total.fetch_all()] == [6.0] * 4
    gathered = cx.all_gather(rank.view([1]), ["tp"])
    assert gathered.fetch({"dp": 1, "tp": 0}).tolist() == [2.0, 3.0]
    avg = cx.all_reduce(rank.view([1]), ["dp"], cx.Reduce.Avg)
    assert avg.fetch([0, 1]).item() == 2.0
    half0, half1 = mesh.slice("dp", 0), mesh.slice("dp", 1)
    v = cx.from_local(half0, torch.tensor([5.0])).to_mesh(half1)
    assert v.mesh == half1 and v.fetch([1]).item() == 5.0
    # A gradient bucket: flatten, reduce in place, copy back averaged.
    local = [torch.arange(6.0).view(2, 3), torch.tensor([7.0])]
    parts = [cx.from_local(mesh, t) for t in local]
    flat = cx.flatten(parts)
    assert torch.equal(flat.fetch([0, 0]), torch.cat([t.view(-1) for t in local]))
    cx.all_reduce_(flat, ["dp", "tp"])
    cx.unflatten_(flat, parts, 0.25)
    assert torch.equal(parts[0].fetch([1, 1]), local[0]) and parts[1].fetch([0, 1]).item() == 7.0
    assert ctl.device(0) in ("cpu", "cuda:0")


def test_errors(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    x = cx.ones(mesh, [2, 3])
    with pytest.raises(cx.InvalidArgument, match="shapes cannot be multiplied"):
        x @ x
    with pytest.raises(cx.InvalidArgument, match="no dim 'pp'"):
        cx.all_reduce(x, ["pp"])
    bad = cx.call_op("aten::index_select", "", [x, 0, cx.full(mesh, [1], 7, dtype=torch.int64)])[0]
    with pytest.raises(cx.RemoteError, match="index"):
        bad.fetch([0, 0])
    assert issubclass(cx.RemoteError, cx.Error) and issubclass(cx.Error, RuntimeError)


def test_worker_lost():
    with cx.Controller.local(workers=2, heartbeat_timeout=5.0) as c:
        mesh = c.mesh({"x": 2})
        x = cx.ones(mesh, [4])
        os.kill(c.worker_pid(1), signal.SIGKILL)
        with pytest.raises(cx.WorkerLost):
            for _ in range(200):
                cx.all_reduce(x).fetch([0], timeout=30)


def test_no_worker_outlives_the_interpreter(tmp_path):
    script = textwrap.dedent(
        """
        import coxswain as cx
        ctl = cx.Controller.local(workers=2)
        print(ctl.worker_pid(0), ctl.worker_pid(1), flush=True)
        # exits without shutting down
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pids = [int(p) for p in out.stdout.split()]
    for pid in pids:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            import time

            time.sleep(0.05)
        else:
            pytest.fail(f"worker {pid} outlived its interpreter")


def test_attach_to_workers_started_elsewhere():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = os.path.join(os.path.dirname(cx.__file__), "..", "src", "cox-worker")
    token = "a-token-shared-with-the-workers-0123456789"
    env = dict(os.environ, COX_TOKEN=token)
    procs = [subprocess.Popen([worker, "--connect", f"127.0.0.1:{port}", "--rank", str(r)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(2)]
    try:
        with cx.Controller.attach(2, port, token) as ctl:
            mesh = ctl.mesh({"x": 2})
            total = cx.all_reduce(cx.coordinate(mesh, "x").to(torch.float32).view([1]) + 1.0)
            assert [t.item() for t in total.fetch_all(timeout=30)] == [3.0, 3.0]
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
