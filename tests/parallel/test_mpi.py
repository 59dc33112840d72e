"""MPIDataParallel under mpirun (2 and 3 ranks, oversubscribed on this machine) equals the single process on the
whole batch: four AdamW steps of a small GPT in float64 with dropout, ignored targets and a fully ignored row;
and the same bits run to run for a given number of ranks. Skipped without mpi4py or mpirun (``pip install
scratchllm[mpi]`` brings both)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from scratchllm.parallel.mpi import mpirun

pytest.importorskip("mpi4py")
MPIRUN = mpirun()
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="needs mpirun (pip install scratchllm[mpi])")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "parallel", "mpi_steps.py")


def run(path, ranks=None, *flags):
    cmd = [sys.executable, SCRIPT, str(path), *flags]
    if ranks:
        root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        cmd = [MPIRUN, *root, "--oversubscribe", "-n", str(ranks), *cmd]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process on the whole batch; 2 ranks; 3 ranks; 3 ranks each started from other parameters."""
    d = tmp_path_factory.mktemp("mpi")
    return {"single": run(d / "single.npz"), 2: run(d / "two.npz", 2), "2 again": run(d / "two_again.npz", 2),
            3: run(d / "three.npz", 3), "3 seeds": run(d / "three_seeds.npz", 3, "--rank-seeds")}


@pytest.mark.parametrize("ranks", [2, 3, "3 seeds"])
def test_ranks_equal_the_single_process_on_the_whole_batch(runs, ranks):
    """With "3 seeds" every rank starts from other parameters: rank 0's broadcast makes them one model."""
    got, single = runs[ranks], runs["single"]
    np.testing.assert_allclose(got["losses"], single["losses"], rtol=1e-12)
    for name in single.files:
        if name != "losses":
            np.testing.assert_allclose(got[name], single[name], rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("first, second", [(2, "2 again"), (3, "3 seeds")])
def test_the_same_bits_run_to_run(runs, first, second):
    """Two runs of 2 ranks, and of 3 (one started from other parameters, then broadcast): bit for bit the same."""
    a, b = runs[first], runs[second]
    for name in a.files:
        assert np.array_equal(a[name], b[name]), name
