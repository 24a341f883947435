"""The Python binding on real CPU workers: mesh algebra, ops against local
torch, collectives, errors, and that no worker outlives its interpreter."""
import ast
import os
import re
import signal
import subprocess
import threading
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
    with pytest.raises(cx.RemoteError, match="index") as e:
        bad.fetch([0, 0])
    assert e.value.rank == 0 and "index_select" in e.value.op and e.value.message
    assert issubclass(cx.RemoteError, cx.Error) and issubclass(cx.Error, RuntimeError)


def test_worker_lost():
    with cx.Controller.local(workers=2, heartbeat_timeout=5.0) as c:
        mesh = c.mesh({"x": 2})
        x = cx.ones(mesh, [4])
        os.kill(c.worker_pid(1), signal.SIGKILL)
        with pytest.raises(cx.WorkerLost) as e:
            for _ in range(200):
                cx.all_reduce(x).fetch([0], timeout=30)
        assert e.value.rank == 1 and e.value.reason
        assert 1 in c.lost_workers()
        assert c.status()[1].state in (cx.WorkerStatus.State.Lost, cx.WorkerStatus.State.Exited)


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
        options = cx.ControllerOptions(workers=2, listen_port=port, token=token)
        with cx.Controller.attach(options) as ctl:
            mesh = ctl.mesh({"x": 2})
            total = cx.all_reduce(cx.coordinate(mesh, "x").to(torch.float32).view([1]) + 1.0)
            assert [t.item() for t in total.fetch_all(timeout=30)] == [3.0, 3.0]
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


WORKER = os.path.join(os.path.dirname(cx.__file__), "..", "src", "cox-worker")


def test_attach_port_0_learns_the_port_from_on_listening():
    procs, infos = [], []

    def start_workers(info):
        # Called once the controller listens: the port is known only now.
        infos.append(info)
        env = dict(os.environ, COX_TOKEN=info.token)
        for r in range(2):
            procs.append(subprocess.Popen([WORKER, "--connect", f"{info.host}:{info.port}", "--rank", str(r)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        with cx.Controller.attach(workers=2, listen_port=0, on_listening=start_workers) as ctl:
            assert len(infos) == 1 and infos[0].port != 0 and infos[0].host == "127.0.0.1"
            here = ctl.attach_info()
            assert (here.host, here.port, here.token) == (infos[0].host, infos[0].port, infos[0].token)
            assert str(infos[0].port) in repr(here) and here.token not in repr(here)
            assert [ctl.worker_pid(r) for r in range(2)] == [-1, -1]
            mesh = ctl.mesh({"x": 2})
            total = cx.all_reduce(cx.coordinate(mesh, "x").to(torch.float32).view([1]) + 1.0)
            assert [t.item() for t in total.fetch_all(timeout=30)] == [3.0, 3.0]
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_on_listening_error_fails_attach():
    def boom(info):
        raise ValueError(f"no launcher for port {info.port}")

    with pytest.raises(ValueError, match="no launcher for port"):
        cx.Controller.attach(workers=1, on_listening=boom)


def test_shape_algebra():
    s = cx.Shape({"dp": 2, "tp": 4})
    assert s.names == ["dp", "tp"] and s.sizes == [2, 4] and s.strides == [4, 1] and s.offset == 0
    assert s.ndim == 2 and s.size() == 8 and s.size("tp") == 4 and s.index_of("tp") == 1
    assert s.has_dim("dp") and not s.has_dim("pp")
    assert s.ranks == list(range(8))
    assert s.rank_of([1, 2]) == 6 and s.rank_of({"tp": 2, "dp": 1}) == 6 and s.coord_of(6) == [1, 2]
    assert s.groups(["tp"]) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert s.groups(["dp"]) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert s.groups([]) == [[r] for r in range(8)] and s.groups(["dp", "tp"]) == [list(range(8))]
    row = s.slice("dp", 1)
    assert row.names == ["tp"] and row.ranks == [4, 5, 6, 7] and 5 in row and 1 not in row
    assert row.local_index(6) == 2 and row.contains(7)
    assert s.slice("tp", 0, 4, 2).ranks == [0, 2, 4, 6]
    assert s.slice({"dp": 1, "tp": 3}).ranks == [7]
    assert s.split("tp", ["a", "b"], [2, -1]).sizes == [2, 2, 2]
    t = s.transpose("dp", "tp")
    assert t.names == ["tp", "dp"] and t.ranks == [0, 4, 1, 5, 2, 6, 3, 7]
    assert s.permute(["tp", "dp"]) == t and not t.is_flattenable() and s.is_flattenable()
    assert s.rename("dp", "x").names == ["x", "tp"] and s.flatten("w").sizes == [8]
    assert str(s) == "{dp=2, tp=4}" == s.to_string() and repr(s) == "Shape({dp=2, tp=4})"
    assert s == cx.Shape([("dp", 2), ("tp", 4)]) and s != t and s != "{dp=2, tp=4}"
    assert len({s, cx.Shape({"dp": 2, "tp": 4}), t}) == 2
    strided = cx.Shape(["a"], [2], [3], 1)
    assert strided.ranks == [1, 4] and "offset" in strided.to_string(True)
    with pytest.raises(cx.InvalidArgument, match="pp"):
        s.size("pp")
    with pytest.raises(cx.InvalidArgument, match="dp"):
        cx.Shape([("dp", 2), ("dp", 2)])


def test_mesh_shape_and_named_slice(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    assert mesh.shape == cx.Shape({"dp": 2, "tp": 2}) and mesh.shape.groups(["tp"]) == [[0, 1], [2, 3]]
    assert mesh.slice({"dp": 1}).ranks == [2, 3] and mesh.slice({"dp": 1}).shape == mesh.shape.slice("dp", 1)
    x = cx.ones(mesh, [2])
    assert mesh.live_tensors({"dp": 0, "tp": 0}) >= 1
    del x


def _cxx_defaults():
    # The defaults of include/cox/controller.hpp, as the struct states them.
    return dict(workers=0, device="auto", gpus=[], worker_path="", worker_env=None, listen_host="127.0.0.1",
                listen_port=0, token="", on_listening=None, startup_timeout=30.0, shutdown_timeout=5.0,
                heartbeat_interval=1.0, heartbeat_timeout=10.0, max_frame_bytes=1 << 30,
                send_buffer_bytes=64 << 20, send_timeout=600.0, collective_timeout=600.0, op_timeout=0.0,
                op_timeout_loses_worker=False, stderr_lines_kept=20, output_sink=None)


def _fields():
    return [k for k, v in vars(cx.ControllerOptions).items() if isinstance(v, property)]


def test_controller_options_defaults_and_round_trip():
    o = cx.ControllerOptions()
    assert sorted(_fields()) == sorted(_cxx_defaults())
    assert {k: getattr(o, k) for k in _fields()} == _cxx_defaults()
    values = dict(workers=3, device="cpu", gpus=[1, 0], worker_path="/x/cox-worker", listen_host="0.0.0.0",
                  listen_port=4242, token="t" * 40, startup_timeout=1.5, shutdown_timeout=2.25,
                  heartbeat_interval=0.5, heartbeat_timeout=4.0, max_frame_bytes=1 << 20, send_buffer_bytes=4096,
                  send_timeout=7.0, collective_timeout=8.0, op_timeout=9.5, op_timeout_loses_worker=True,
                  stderr_lines_kept=3)
    o = cx.ControllerOptions(**values)
    assert {k: getattr(o, k) for k in values} == values
    sink, env, hook = (lambda rank, stream, line: None), (lambda rank: {}), (lambda info: None)
    o.output_sink, o.worker_env, o.on_listening = sink, env, hook
    assert o.output_sink is sink and o.worker_env is env and o.on_listening is hook
    o.output_sink = None
    assert o.output_sink is None
    assert "heartbeat_timeout=4.0" in repr(o) and "t" * 40 not in repr(o)


def test_controller_options_reject_bad_values():
    with pytest.raises(cx.InvalidArgument, match="heartbeat_timeout: -1"):
        cx.ControllerOptions(heartbeat_timeout=-1)
    with pytest.raises(cx.InvalidArgument, match="listen_port: 70000"):
        cx.ControllerOptions(listen_port=70000)
    with pytest.raises(cx.InvalidArgument, match="workers: expected an int, got '4'"):
        cx.ControllerOptions(workers="4")
    with pytest.raises(cx.InvalidArgument, match="no field 'heartbeat'"):
        cx.ControllerOptions(heartbeat=1.0)
    with pytest.raises(cx.InvalidArgument, match="output_sink: expected a callable or None, got 3"):
        cx.ControllerOptions().output_sink = 3
    with pytest.raises(cx.InvalidArgument, match="no field 'wrokers'"):
        cx.Controller.local(wrokers=2)
    with pytest.raises(cx.InvalidArgument, match="heartbeat_timeout .* must exceed heartbeat_interval"):
        cx.Controller.local(cx.ControllerOptions(workers=1), heartbeat_interval=2.0, heartbeat_timeout=1.0)


def test_stub_lists_every_option_as_a_keyword():
    stub = os.environ.get("COX_PYTHON_STUB")
    if not stub:
        pytest.skip("COX_PYTHON_STUB (the generated stub's path) is set by ctest only")
    tree = ast.parse(open(stub).read())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    fields = sorted(_fields())
    ctl = {n.name: n for n in classes["Controller"].body if isinstance(n, ast.FunctionDef)}
    init = [n for n in classes["ControllerOptions"].body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    for fn in (ctl["local"], ctl["attach"], init[0]):
        assert sorted(a.arg for a in fn.args.kwonlyargs) == fields, fn.name


def test_options_callbacks_from_worker_threads(tmp_path):
    # A worker binary that says hello (with a variable worker_env set) first.
    wrapper = tmp_path / "hello-worker"
    wrapper.write_text(f'#!/bin/sh\necho "hello from $COX_TEST_HELLO" >&2\nexec {os.path.abspath(WORKER)} "$@"\n')
    wrapper.chmod(0o755)
    lines = []
    both = threading.Event()

    def sink(rank, stream, line):  # on the controller's I/O thread, with the GIL
        lines.append((rank, stream, line))
        if sum(l.startswith("hello from") for _, _, l in lines) == 2:
            both.set()

    def env(rank):  # on the I/O thread too, while local() spawns
        return {"COX_TEST_HELLO": f"r{rank}"}

    with cx.Controller.local(workers=2, device="cpu", worker_path=str(wrapper), output_sink=sink, worker_env=env) as c:
        assert both.wait(timeout=30)
        assert sorted((r, s, l) for r, s, l in lines if l.startswith("hello")) == [
            (0, cx.OutputStream.Stderr, "hello from r0"), (1, cx.OutputStream.Stderr, "hello from r1")]
        status = c.status()
        assert [s.rank for s in status] == [0, 1] and all(s.device == "cpu" for s in status)
        assert all(s.state in (cx.WorkerStatus.State.Idle, cx.WorkerStatus.State.Busy) for s in status)
        assert all(s.pid == c.worker_pid(s.rank) for s in status) and "worker 1" in str(status[1])
        assert c.ping(1, timeout=30) >= 0.0


def test_worker_env_must_return_pairs():
    with pytest.raises(cx.InvalidArgument, match=r"worker_env\(0\) must return .* got 7"):
        cx.Controller.local(workers=1, device="cpu", worker_env=lambda rank: 7)


def test_fetch_async_and_timeout(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    x = cx.from_local(mesh, torch.arange(4.0))
    ctl.sync(timeout=30)
    pid = ctl.worker_pid(3)
    os.kill(pid, signal.SIGSTOP)  # a stopped worker cannot answer: the wait must time out
    try:
        f = (x * 2.0).fetch_async({"dp": 1, "tp": 1})
        with pytest.raises(cx.Timeout):
            f.get(timeout=0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert f.get(timeout=30).tolist() == [0.0, 2.0, 4.0, 6.0]
    assert f.get().tolist() == [0.0, 2.0, 4.0, 6.0]  # a taken value stays
    assert x.fetch_async([0, 0]).get(timeout=30).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_table_ops(ctl):
    mesh = ctl.mesh({"dp": 2, "tp": 2})
    a = torch.arange(6.0).view(2, 3)
    ra = cx.from_local(mesh, a)
    torch.testing.assert_close(ra.add(ra, alpha=2).fetch([0, 0]), a + 2 * a)
    torch.testing.assert_close(ra.add(1.5).fetch([0, 1]), a + 1.5)
    torch.testing.assert_close(ra.sum().fetch([1, 0]), a.sum())
    torch.testing.assert_close(ra.sum([1], keepdim=True).fetch([1, 1]), a.sum(1, keepdim=True))
    torch.testing.assert_close(ra.mean(dims=[0]).fetch([0, 0]), a.mean(0))
    torch.testing.assert_close(ra.div(ra + 1.0).fetch([0, 0]), a / (a + 1))
    torch.testing.assert_close(ra.transpose(0, 1).contiguous().view([6]).fetch([0, 0]), a.t().reshape(6))
    torch.testing.assert_close(cx.softmax(ra, dim=1).fetch([0, 0]), torch.softmax(a, 1))
    torch.testing.assert_close(cx.cat([ra, ra], 0).fetch([0, 0]), torch.cat([a, a]))
    torch.testing.assert_close(cx.linear(ra, cx.from_local(mesh, torch.eye(3))).fetch([0, 0]), a)
    i = cx.from_local(mesh, torch.arange(6).view(2, 3))
    assert i.add(i, alpha=2).dtype == torch.int64  # a whole alpha is passed as an int
    y = cx.zeros(mesh, [2, 3])
    assert y.add_(ra).mul_(2.0).sub_(ra, alpha=0.5).fill_(3.0).fetch([0, 0]).tolist() == [[3.0] * 3] * 2
    with pytest.raises(cx.InvalidArgument, match="aten::cat"):
        cx.cat([])


def _gen_ops():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "src", "ops", "gen_ops.py")
    spec = importlib.util.spec_from_file_location("gen_ops", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("line, error", [
    ("method Tensor sin(float x) = aten::sin(self)", "unsupported type 'float'"),
    ("method Tensor sin() = aten::sin(x)", "unknown name 'x'"),
    ("method Tensor sin(int64_t dim) = aten::sin(self)", "parameter 'dim' is not passed"),
    ("function Tensor sin(int64_t dim) = aten::sin(dim)", "needs a tensor parameter"),
    ("inplace Tensor sin_() = aten::sin_(self)", "returns Tensor&, not 'Tensor'"),
    ("method Tensor sin(double s = abc) = aten::sin(self, s)", "unsupported default 'abc'"),
    ("method sin", "expected: KIND RETURN NAME(PARAMS)"),
])
def test_op_table_errors_name_the_line(tmp_path, line, error):
    gen = _gen_ops()
    table = tmp_path / "ops.def"
    table.write_text("method Tensor exp() = aten::exp(self)\n" + line + "\n")
    with pytest.raises(gen.Fail, match=r"ops\.def:2: .*" + re.escape(error)):
        gen.parse(str(table))


def test_op_table_one_line_makes_every_piece(tmp_path):
    gen = _gen_ops()
    table = tmp_path / "ops.def"
    table.write_text("/// Times scale.\nmethod Tensor scaled(double scale = 1) = aten::mul.Scalar(self, scale)\n")
    ops = gen.parse(str(table))
    assert "  Tensor scaled(double scale = 1) const;" in gen.gen_declarations(ops, True, "  ")
    assert 'op1(COX_OP("aten::mul", "Scalar"), {*this, scale})' in gen.gen_definitions(ops)
    py = gen.gen_python(ops)
    assert '"scaled"' in py and 'py::arg("scale") = static_cast<double>(1)' in py and '"Times scale."' in py
    assert gen.stub_def(ops[0], "    ", False) == [
        "    def scaled(self, scale: float = 1.0) -> Tensor:", '        """Times scale."""']
