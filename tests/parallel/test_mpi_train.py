"""``scratchllm train`` (by default one MPI rank per CPU with mpi4py installed; ``--nproc=2``) gives the single
process's run: the same losses step by step (float64, dropout on, within 1e-12) and the same sample, also after
``--resume``; a bad config under MPI is one line and exit 2; one failing rank ends the job with its error once,
never a hang."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scratchllm.parallel.mpi import default_ranks, mpirun

pytest.importorskip("mpi4py")
MPIRUN = mpirun()
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="needs mpirun (pip install scratchllm[mpi])")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(tmp_path, out, *extra):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():  # 150 KB of text: this package's ops, twice
        corpus.write_text("".join(p.read_text() for p in sorted(Path(ROOT, "scratchllm", "ops").glob("*.py"))) * 2)
    args = [f"--data={corpus}", f"--out_dir={tmp_path / out}", "--eval_interval=5", "--eval_iters=2", "--batch_size=4",
            "--block_size=24", "--n_layer=1", "--n_embd=16", "--dtype=float64", "--dropout=0.1", "--sample_tokens=12",
            "--progress=false", *extra]
    done = subprocess.run([sys.executable, "-m", "scratchllm", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    return done


def losses(tmp_path, out):
    rows = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], k, r[k]) for r in rows for k in ("loss", "train_loss", "val_loss") if k in r]


def test_the_default_ranks_and_two_give_the_single_process_run_and_resume_alike(tmp_path):
    """20 steps in float64 with dropout: the default (one rank per CPU, at most the batch's 4 rows) against one
    process, every logged loss within 1e-12; then both resume to 25 steps, the ranks' run with --nproc=2."""
    single, ranks = train(tmp_path, "one", "--max_iters=20", "--nproc=1"), train(tmp_path, "two", "--max_iters=20")
    assert single.returncode == 0 and ranks.returncode == 0, ranks.stderr[-2000:]
    n = default_ranks(4, "numpy")
    assert (f"data parallel: {n} MPI ranks" if n > 1 else "in threads") in ranks.stderr
    assert "in threads" in single.stderr and ranks.stderr.count("step 20: train loss") == 1
    for (s1, k1, a), (s2, k2, b) in zip(losses(tmp_path, "one"), losses(tmp_path, "two"), strict=True):
        assert (s1, k1) == (s2, k2) and b == pytest.approx(a, rel=1e-12), (s1, k1)
    assert single.stdout == ranks.stdout and single.stdout.startswith("def ")  # no colour codes from the ranks
    single, ranks = (train(tmp_path, out, "--max_iters=25", "--resume", extra) for out, extra in
                     (("one", "--nproc=1"), ("two", "--nproc=2")))
    assert single.returncode == 0 and ranks.returncode == 0, ranks.stderr[-2000:]
    for (_, _, a), (_, _, b) in zip(losses(tmp_path, "one"), losses(tmp_path, "two"), strict=True):
        assert b == pytest.approx(a, rel=1e-12)


def test_float32_ranks_agree_within_1e_5(tmp_path):
    single = train(tmp_path, "one", "--max_iters=20", "--nproc=1", "--dtype=float32", "--sample_tokens=0")
    ranks = train(tmp_path, "two", "--max_iters=20", "--nproc=2", "--dtype=float32", "--sample_tokens=0")
    assert single.returncode == 0 and ranks.returncode == 0, ranks.stderr[-2000:]
    for (s1, k1, a), (s2, k2, b) in zip(losses(tmp_path, "one"), losses(tmp_path, "two"), strict=True):
        assert (s1, k1) == (s2, k2) and b == pytest.approx(a, rel=1e-5), (s1, k1)


def test_a_bad_config_under_mpi_is_one_line_and_exit_2(tmp_path):
    """Found by the ranks, not before the launch (the launcher checks the --key=value flags themselves)."""
    done = train(tmp_path, "bad", "--nproc=2", "--max_iters=1", f"--data={tmp_path / 'no_such_file.txt'}")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr[-1000:]
    assert "no_such_file.txt" in done.stderr


@pytest.mark.parametrize("error, everywhere, said, status", [
    ("RuntimeError('disk full')", False, "error on rank 1 of 2: RuntimeError: disk full", None),
    ("ValueError('data path /x does not exist')", True, "error on rank 1 of 2: data path /x does not exist", 2),
])
def test_an_error_only_one_rank_meets_ends_the_job_with_its_line_once(tmp_path, error, everywhere, said, status):
    """Rank 1 fails, rank 0 waits in a collective. Not everywhere: MPI_Abort ends the job. Everywhere (an error
    every rank is expected to meet alike, say a missing data file, met here by rank 1 alone as on a machine without
    the file): rank 1 leaves rank 0 to end the job, which it will not, then says it and exits 2."""
    script = tmp_path / "fail.py"
    script.write_text("from scratchllm.parallel import mpi\n"
                      "mpi.EVERYWHERE_WAIT_S = 1.0\n"
                      "comm = mpi.world()\n"
                      "if comm.Get_rank() == 1:\n"
                      f"    mpi.fail(comm, {error}, everywhere={everywhere})\n"
                      "comm.Barrier()  # rank 0 would wait here forever\n")
    root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    done = subprocess.run([MPIRUN, *root, "-n", "2", sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode != 0 and done.returncode == (status or done.returncode)
    assert (done.stdout + done.stderr).count(f"scratchllm: {said}") == 1


def test_a_rank_killed_mid_run_leaves_a_loadable_checkpoint_and_resume_goes_on(tmp_path):
    """kill -9 of rank 1 while the job trains: mpirun ends the job; the latest checkpoint (written atomically by
    rank 0) loads, and --resume under MPI continues from it to the end."""
    import signal
    import time

    from scratchllm.io.checkpoint import load_checkpoint, resolve_checkpoint

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(p.read_text() for p in sorted(Path(ROOT, "scratchllm", "ops").glob("*.py"))) * 2)
    args = [f"--data={corpus}", f"--out_dir={tmp_path / 'run'}", "--eval_interval=3", "--eval_iters=1",
            "--batch_size=4", "--block_size=24", "--n_layer=1", "--n_embd=16", "--sample_tokens=0", "--progress=false"]
    log = open(tmp_path / "job.log", "w")  # a file, not a pipe: a full pipe would stop the job, not the kill
    job = subprocess.Popen([sys.executable, "-m", "scratchllm", "train", *args, "--max_iters=100000", "--nproc=2"],
                           cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        def latest():  # the newest checkpoint's step (older ones are rotated away while we look)
            return max((int(p.name[5:]) for p in (tmp_path / "run").glob("ckpt_*") if p.name[5:].isdigit()),
                       default=-1)
        deadline = time.time() + 120
        while latest() < 6 and time.time() < deadline:
            time.sleep(0.2)
        ranks = [int(p) for p in subprocess.run(["pgrep", "-f", f"out_dir={tmp_path / 'run'}"], capture_output=True,
                                                text=True).stdout.split() if int(p) != job.pid]
        assert len(ranks) >= 2, ranks
        os.kill(max(ranks), signal.SIGKILL)  # a rank (the youngest process of the job)
        job.wait(timeout=60)  # the job ends: no hang
    finally:
        job.kill()
        log.close()
    assert job.returncode != 0 and "exited on signal 9" in (tmp_path / "job.log").read_text().replace("\n", " ")
    model, _, info = load_checkpoint(resolve_checkpoint(tmp_path / "run"), with_optimizer=True)
    step = info["trainer"]["step"]
    assert step >= 6 and step % 3 == 0
    done = subprocess.run([sys.executable, "-m", "scratchllm", "train", *args, f"--max_iters={step + 3}", "--resume",
                           "--nproc=2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0 and "resuming from" in done.stderr and f"step {step + 3}: train loss" in done.stderr
