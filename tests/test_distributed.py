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
