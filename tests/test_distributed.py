"""Expert parallelism in real process groups: torch.multiprocessing spawns world sizes 2, 3 and 4
(gloo, CPU), each rank running every check of tests/distributed_checks.py (sharded layer against
the full layer on the same tokens, forward and backward; dispatch / combine gradcheck; errors),
one process group per world size; each check is reported here as a test of its own."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Dict

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import distributed_checks  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
DEADLINE_S = 240  # a group that has not finished by then is killed (a hang is a failure, not a wait)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_group(world: int, out_dir: str) -> Dict[int, Dict[str, str]]:
    import torch.multiprocessing as mp

    context = mp.start_processes(distributed_checks.worker, args=(world, _free_port(), out_dir), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    error = None
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                error = f"the group of {world} did not finish within {DEADLINE_S} s"
                break
    except Exception as err:  # a rank crashed: its results so far are still read below
        error = f"{type(err).__name__}: {err}"
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    results = {}
    for rank in range(world):
        path = os.path.join(out_dir, f"rank{rank}.json")
        results[rank] = json.load(open(path)) if os.path.exists(path) else {}
        if error:
            results[rank]["<group>"] = error
    return results


_RESULTS: Dict[int, Dict[int, Dict[str, str]]] = {}


def _results(world: int, tmp_path_factory: pytest.TempPathFactory) -> Dict[int, Dict[str, str]]:
    if world not in _RESULTS:
        _RESULTS[world] = _run_group(world, str(tmp_path_factory.mktemp(f"world{world}")))
    return _RESULTS[world]


CASES = [(world, name) for world in (2, 4, 3) for name in distributed_checks.names_for(world)]


@pytest.mark.parametrize("world,check", CASES, ids=[f"world{w}-{n}" for w, n in CASES])
def test_expert_parallel(world: int, check: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    results = _results(world, tmp_path_factory)
    failures = []
    for rank, got in sorted(results.items()):
        outcome = got.get(check, f"not run ({got.get('<group>', 'the rank stopped before it')})")
        if outcome != "ok":
            failures.append(f"rank {rank}:\n{outcome}")
    assert not failures, "\n".join(failures)


def test_torchrun_demo_expert_parallel(tmp_path):
    """`torchrun --nproc-per-node 2 -m moeroute demo --expert-parallel` (quick mode) trains and reports."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import subprocess

    png = tmp_path / "load.png"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "moeroute", "demo", "--expert-parallel", "--quick", "--out", str(png)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "expert parallelism: 2 processes (gloo, CPU), each holding 4 of the 8 experts" in result.stdout
    assert "final test accuracy: " in result.stdout and png.exists()


def test_demo_expert_parallel_without_torchrun_says_how(monkeypatch):
    from moeroute._demo import ExpertParallelRun

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="torchrun --nproc-per-node 2 -m moeroute demo --expert-parallel"):
        ExpertParallelRun()


# ---------------------------------------------------------------- regroup alone, one process

from hypothesis import given, settings, strategies as st  # noqa: E402

import moeroute  # noqa: E402
from moeroute import _core  # noqa: E402
from moeroute.torch.distributed import regroup  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _regroup_reference(rows, counts):
    """The blocks cut out in a-major order and pasted in b-major order."""
    a, b = counts.shape
    blocks = list(rows.split(counts.flatten().tolist()))
    return torch.cat([blocks[i * b + j] for j in range(b) for i in range(a)]) if blocks else rows.clone()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 9), st.sampled_from(DTYPES), st.data())
def test_regroup_against_its_definition(a, b, hidden, dtype, data):
    counts = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=a * b, max_size=a * b))).view(a, b)
    rows = torch.randn(int(counts.sum()), hidden).to(dtype)
    out = regroup(rows, counts)
    assert torch.equal(out, _regroup_reference(rows, counts))
    assert torch.equal(regroup(out, counts.t()), rows)


def test_regroup_gradcheck():
    counts = torch.tensor([[2, 0, 1], [1, 3, 0]])
    rows = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: regroup(r, counts), (rows,))


@pytest.mark.skipif(moeroute.cuda_available(), reason="an NVIDIA driver is present")
def test_cuda_regroup_without_a_driver_raises_cuda_error():
    # Fake device pointers: the driver check comes before any of them is used.
    with pytest.raises(moeroute.CudaError, match="no NVIDIA driver"):
        _core.cuda_regroup(0, 0, "float32", 16, 4, 8, 32, 2, 2, 48, 64)
    assert _core.cuda_regroup_workspace(2, 3) == 13 * 8  # host arithmetic, no driver needed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_regroup_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for hidden in (1, 3, 8, 64, 1000):
            counts = torch.randint(0, 5, (4, 3), generator=g)
            rows = torch.randn(int(counts.sum()), hidden, generator=g).to(dtype)
            got = regroup(rows.cuda(), counts.cuda())
            assert torch.equal(got.cpu(), regroup(rows, counts))
            assert torch.equal(regroup(got, counts.t().cuda()).cpu(), rows)
    rows = torch.randn(int(counts.sum()), 5, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: regroup(r, counts.cuda()), (rows,))


GPU_WORLD_OF_ONE = """
import datetime, torch, torch.distributed as dist
from moeroute.torch import MoE
from moeroute.torch.distributed import shard_moe
dist.init_process_group("nccl", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1,
                        timeout=datetime.timedelta(seconds=60))
torch.cuda.set_device(0)
for options in ({{}}, {{"capacity": 6}}, {{"capacity_factor": 1.0}}, {{"pad_to": 4}}):
    torch.manual_seed(0)
    full = MoE(32, 4, 2, ffn_size=16, **options).cuda()
    sharded = shard_moe(full)
    x = torch.randn(40, 32, device="cuda")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = full(xa), sharded(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    ya.square().sum().backward(); yb.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sharded.experts.w_up.grad, full.experts.w_up.grad, rtol=1e-4, atol=1e-4)
dist.destroy_process_group()
print("ok")
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs a CUDA device and NCCL")
def test_cuda_expert_parallel_world_of_one_matches_the_full_layer():
    """One GPU: a sharded layer in an NCCL group of one against the full layer (the exchange, the
    CUDA regroup and the layer's checks on the GPU; the multi-rank exchange is the CPU tests')."""
    import subprocess

    result = subprocess.run([sys.executable, "-c", GPU_WORLD_OF_ONE.format(port=_free_port())],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
