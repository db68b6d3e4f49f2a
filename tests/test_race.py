"""Racing a plan: threads write a torch plan's index tensors (dest, src, expert_ids) in place while
other threads run every data-moving op on it. Racing user code is the user's bug, but each call must
either raise PlanError or return a well-formed result — never panic, never print Rust panic text,
never touch memory out of bounds — and once the writes stop, every op gives the exact results of
the untouched plan again. Runs in a subprocess so that its stderr can be checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

# Seconds of racing per child process, then seconds of calls on the restored plan.
RACE_SECONDS = 2.0
CALM_SECONDS = 0.5


def _child() -> dict:
    import threading
    import time

    import numpy as np
    import torch

    import moeroute
    from moeroute import _core
    from moeroute.errors import PlanError
    from moeroute.plan import FIELD_NAMES, RoutingPlan

    T, H, E, k = 512, 64, 8, 2  # R = 1024 rows: every data-moving op takes the parallel path
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(T, E, generator=gen)
    plan = moeroute.route(logits, k, capacity_factor=1.0)  # dropped picks and padding rows
    R = plan.num_rows
    # A NumPy plan sharing the torch plan's memory: the writes race the NumPy front too.
    np_plan = RoutingPlan._of([getattr(plan, name).numpy() for name in FIELD_NAMES], plan.capacity,
                              plan.score, plan.normalize, plan.scale)
    x = torch.randn(T, H, generator=gen)
    yp = torch.randn(R, H, generator=gen)
    grad_y = torch.randn(T, H, generator=gen)
    grad_w = torch.randn(T, k, generator=gen)
    xn, ypn, gyn, gwn, ln = x.numpy(), yp.numpy(), grad_y.numpy(), grad_w.numpy(), logits.numpy()

    def validate(p):
        _core.validate_plan(p.expert_ids.numpy(), p.dest.numpy(), p.src.numpy(), p.expert_offsets.numpy(),
                            p.tokens_per_expert.numpy(), p.assigned_per_expert.numpy(), p.capacity)
        return ()

    ops = {
        "permute": lambda: moeroute.permute(x, plan),
        "combine": lambda: moeroute.combine(yp, plan),
        "permute_backward": lambda: moeroute.permute_backward(yp, plan),
        "combine_backward": lambda: moeroute.combine_backward(grad_y, yp, plan),
        "route_backward": lambda: moeroute.route_backward(grad_w, plan, logits),
        "numpy.permute": lambda: moeroute.permute(xn, np_plan),
        "numpy.combine": lambda: moeroute.combine(ypn, np_plan),
        "numpy.permute_backward": lambda: moeroute.permute_backward(ypn, np_plan),
        "numpy.combine_backward": lambda: moeroute.combine_backward(gyn, ypn, np_plan),
        "numpy.route_backward": lambda: moeroute.route_backward(gwn, np_plan, ln),
        "validate_plan": lambda: validate(plan),
    }

    def as_tuple(result):
        return result if isinstance(result, tuple) else (result,)

    def as_numpy(v):
        return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    reference = {name: [as_numpy(v).copy() for v in as_tuple(op())] for name, op in ops.items()}
    pristine = {name: getattr(plan, name).clone() for name in ("dest", "src", "expert_ids")}
    limits = {"dest": R, "src": T, "expert_ids": E}

    counts = {name: {"calls": 0, "plan_errors": 0, "results": 0} for name in ops}
    failures: list = []
    lock = threading.Lock()
    racing = threading.Event()
    stop = threading.Event()
    writing = threading.Lock()

    def write(rng) -> None:
        """One racing write to a random index tensor of the plan."""
        name = list(pristine)[rng.integers(len(pristine))]
        flat = getattr(plan, name).view(-1)
        n, limit = flat.numel(), limits[name]
        i = torch.from_numpy(rng.integers(0, n, size=int(rng.integers(1, 9))))
        kind = rng.integers(6)
        if kind == 0:  # in-range values (a plausible but inconsistent plan)
            flat[i] = torch.from_numpy(rng.integers(-1, limit, size=len(i)).astype(np.int32))
        elif kind == 1:  # duplicates: entries copied from other entries
            flat[i] = flat[torch.from_numpy(rng.integers(0, n, size=len(i)))]
        elif kind == 2:  # out of range, both ways
            bad = rng.choice([limit, limit + 7, 2**31 - 1, 2**30, -2, -(2**31)], size=len(i))
            flat[i] = torch.from_numpy(bad.astype(np.int32))
        elif kind == 3:  # a swap (sometimes consistent again)
            j = torch.from_numpy(rng.integers(0, n, size=len(i)))
            a, b = flat[i].clone(), flat[j].clone()
            flat[i], flat[j] = b, a
        else:  # restore: calls made now may see a consistent plan
            getattr(plan, name).copy_(pristine[name])

    def mutate(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            with writing:  # racing is read under the lock: no write lands after the restore
                if racing.is_set():
                    write(rng)
                    continue
            time.sleep(0.001)

    def call(seed: int, deadline: float, calm: bool) -> None:
        rng = np.random.default_rng(seed)
        names = list(ops)
        while time.monotonic() < deadline:
            name = names[rng.integers(len(names))]
            try:
                got = [as_numpy(v) for v in as_tuple(ops[name]())]
            except PlanError:
                with lock:
                    counts[name]["calls"] += 1
                    counts[name]["plan_errors"] += 1
                    if calm:
                        failures.append(f"{name}: PlanError on the restored plan")
                continue
            except Exception as e:  # noqa: BLE001 — any other exception fails the test
                with lock:
                    counts[name]["calls"] += 1
                    failures.append(f"{name}: {type(e).__name__}: {e}")
                continue
            want = reference[name]
            well_formed = len(got) == len(want) and all(g.shape == w.shape and g.dtype == w.dtype
                                                        for g, w in zip(got, want))
            equal = well_formed and all(np.array_equal(g, w) for g, w in zip(got, want))
            with lock:
                counts[name]["calls"] += 1
                counts[name]["results"] += 1
                if not well_formed:
                    failures.append(f"{name}: result of the wrong shape or dtype")
                elif calm and not equal:
                    failures.append(f"{name}: result differs from the untouched plan's")

    def run(calm: bool, seconds: float) -> dict:
        for c in counts.values():
            c.update(calls=0, plan_errors=0, results=0)
        deadline = time.monotonic() + seconds
        callers = [threading.Thread(target=call, args=(10 + i, deadline, calm)) for i in range(3)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        return {name: dict(c) for name, c in counts.items()}

    mutators = [threading.Thread(target=mutate, args=(i,)) for i in range(2)]
    for t in mutators:
        t.start()
    racing.set()
    race = run(calm=False, seconds=RACE_SECONDS)
    racing.clear()
    with writing:
        for name, values in pristine.items():
            getattr(plan, name).copy_(values)
    calm = run(calm=True, seconds=CALM_SECONDS)
    stop.set()
    for t in mutators:
        t.join()
    return {"race": race, "calm": calm, "failures": failures[:20], "num_failures": len(failures)}


def _run_child(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    proc = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "panicked" not in proc.stderr, f"Rust panic text on stderr:\n{proc.stderr[-4000:]}"
    assert "internal error" not in proc.stderr, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("openmp", ["team", "pool"])
def test_racing_writes_to_the_plan_give_plan_errors_or_results(openmp):
    report = _run_child({"MOEROUTE_NO_OPENMP": "1"} if openmp == "pool" else {})
    print(json.dumps(report))
    assert report["num_failures"] == 0, report["failures"]
    race, calm = report["race"], report["calm"]
    for name in race:
        # The race was run (each op saw inconsistent plans and raised PlanError), and after it
        # every op ran on the restored plan and gave its exact results.
        assert race[name]["calls"] > 0 and race[name]["plan_errors"] > 0, (name, race[name])
        assert calm[name]["calls"] > 0 and calm[name]["results"] == calm[name]["calls"], (name, calm[name])


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    print(json.dumps(_child()))
