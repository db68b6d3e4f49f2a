"""set_num_threads / get_num_threads, and results bit-identical for any thread count."""

import os
import re
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

import moeroute
from moeroute import losses


@pytest.fixture
def restore_threads():
    n = moeroute.get_num_threads()
    yield
    moeroute.set_num_threads(n)


def test_set_and_get(restore_threads):
    assert moeroute.get_num_threads() >= 1
    for n in (1, 2, 3, 1):
        moeroute.set_num_threads(n)
        assert moeroute.get_num_threads() == n


def test_bad_thread_count(restore_threads):
    with pytest.raises(ValueError, match="n|num_threads|threads"):
        moeroute.set_num_threads(0)
    with pytest.raises(TypeError):
        moeroute.set_num_threads(1.5)


def test_thread_count_out_of_range_is_refused_promptly(restore_threads):
    moeroute.set_num_threads(2)
    for bad in (10**6, 2**64, 10**30, -1, -(2**70)):
        start = time.perf_counter()
        with pytest.raises(moeroute.ArgumentError, match=r"num_threads: got -?\d+, expected an integer from 1 to \d+") as caught:
            moeroute.set_num_threads(bad)
        assert time.perf_counter() - start < 0.5
        assert str(bad) in str(caught.value)
        assert moeroute.get_num_threads() == 2  # unchanged
    limit = int(re.search(r"from 1 to (\d+)", str(caught.value)).group(1))
    assert limit >= 512
    with pytest.raises(moeroute.ArgumentError, match=f"got {limit + 1},"):
        moeroute.set_num_threads(limit + 1)
    with pytest.raises(moeroute.DTypeError, match="num_threads: got float"):
        moeroute.set_num_threads(2.0)
    moeroute.set_num_threads(np.int64(3))
    assert moeroute.get_num_threads() == 3
    moeroute.set_num_threads(num_threads=1)
    assert moeroute.get_num_threads() == 1


def test_default_from_environment():
    env = dict(os.environ, RAYON_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", "import moeroute; print(moeroute.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def pipeline(logits, x, grad_w_seed=0):
    """Every op on one input; returns all the arrays and numbers produced."""
    out = []
    plans = [moeroute.route(logits, 4, capacity_factor=1.25, priority="score", normalize="kept"),
             moeroute.route(logits, 8, score="sigmoid", bias=np.linspace(-1, 1, logits.shape[1]),
                            num_groups=8, topk_groups=4, pad_to=16),
             moeroute.expert_choice(logits, capacity_factor=2.0)]
    rng = np.random.default_rng(grad_w_seed)
    for plan in plans:
        out += [getattr(plan, name) for name in ("expert_ids", "weights", "probs", "dest", "src",
                                                 "expert_offsets", "tokens_per_expert")]
        xp = moeroute.permute(x, plan)
        y = moeroute.combine(xp, plan)
        grad_yp, grad_w = moeroute.combine_backward(y, xp, plan)
        grad_w = grad_w + rng.normal(size=grad_w.shape).astype(grad_w.dtype)
        out += [xp, y, moeroute.permute_backward(xp, plan), grad_yp, grad_w,
                moeroute.route_backward(grad_w, plan, logits)]
        out += [np.float64(losses.load_balancing_loss(plan)), np.float64(losses.importance_loss(plan))]
    out.append(np.float64(losses.z_loss(logits)))
    return out


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_bit_identical_across_thread_counts(restore_threads, dtype):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(5000, 64)).astype(dtype)
    x = rng.normal(size=(5000, 64)).astype(dtype)
    results = []
    for n in (1, 2):
        moeroute.set_num_threads(n)
        results.append(pipeline(logits, x))
    for a, b in zip(*results):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


# With PyTorch loaded, the task kernels (gating, expert choice, permute, combine and the backward
# passes) run on its OpenMP team; MOEROUTE_NO_OPENMP=1 keeps them in moeroute's rayon pool. Same
# bits either way.
_OPENMP_SCRIPT = r"""
import hashlib, sys
import numpy as np
import torch  # loads the OpenMP runtime (libgomp)
import moeroute
moeroute.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(5)
T, E, k, H = 4096, 16, 2, 256
logits = torch.from_numpy(rng.standard_normal((T, E)).astype(np.float32))
x = torch.from_numpy(rng.standard_normal((T, H)).astype(np.float32))
digest = hashlib.sha256()
for options in ({}, {"capacity_factor": 1.0}):
    plan = moeroute.route(logits, k, **options)
    xp = moeroute.permute(x, plan)
    y = moeroute.combine(xp * 0.5, plan)
    grad_yp, grad_w = moeroute.combine_backward(y, xp, plan)
    grad_x = moeroute.permute_backward(grad_yp, plan)
    twice = torch.from_numpy(moeroute._core.permute_backward(grad_yp.numpy(), "float32", plan.dest.numpy(),
                                                             xp.numpy()))
    grad_logits = moeroute.route_backward(grad_w, plan, logits)
    for t in (plan.weights, plan.probs, plan.expert_ids, plan.dest, plan.src, xp, y, grad_yp, grad_w, grad_x,
              twice, grad_logits):
        digest.update(t.numpy().tobytes())
chosen = moeroute.expert_choice(logits, capacity_factor=1.0)
for t in (chosen.weights, chosen.probs, chosen.expert_ids, chosen.dest, chosen.src):
    digest.update(t.numpy().tobytes())
print(moeroute._core.uses_openmp_team(), digest.hexdigest())
"""


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_openmp_team_and_rayon_pool_give_the_same_bits(threads):
    pytest.importorskip("torch")
    digests = []
    for disabled in ("0", "1"):
        env = dict(os.environ, MOEROUTE_NO_OPENMP=disabled)
        out = subprocess.run([sys.executable, "-c", _OPENMP_SCRIPT, str(threads)], env=env,
                             capture_output=True, text=True, check=True)
        team, digest = out.stdout.split()
        assert team == ("True" if disabled == "0" else "False")
        digests.append(digest)
    assert digests[0] == digests[1]


# A child forked after moeroute's threads started has none of them: kernels there run on the
# calling thread (same bits) instead of waiting forever for workers that do not exist.
_FORK_SCRIPT = r"""
import os, sys
import numpy as np
import moeroute
if sys.argv[1] == "torch":
    import torch  # its OpenMP team
rng = np.random.default_rng(3)
logits = rng.standard_normal((4096, 16)).astype(np.float32)
x = rng.standard_normal((4096, 256)).astype(np.float32)
def run():
    plan = moeroute.route(logits, 2)
    xp = moeroute.permute(x, plan)
    return moeroute.combine(xp, plan), moeroute.combine_backward(x, xp, plan)[0]
parent = run()  # starts the pool / uses the OpenMP team
pid = os.fork()
if pid == 0:
    child = run()
    same = all(np.array_equal(a, b) for a, b in zip(parent, child))
    os._exit(0 if same else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("mode", ["numpy", "torch"])
def test_kernels_in_a_forked_child_do_not_hang(mode):
    if mode == "torch":
        pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, mode], capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == "0"
