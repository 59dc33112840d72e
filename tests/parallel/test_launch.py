"""How ``scratchllm train`` picks its processes (``default_ranks``) and starts them (``launch``), without MPI
running: one rank per CPU (at most one per row) when mpi4py and mpirun are there and the model is on the host,
else one process; the mpirun it starts ends when the launcher dies."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

from scratchllm.parallel import mpi


@pytest.fixture
def installed(monkeypatch):
    """As if mpi4py and an mpirun were installed, on a machine of 6 CPUs."""
    real = importlib.util.find_spec
    monkeypatch.setattr(mpi.importlib.util, "find_spec", lambda name: object() if name == "mpi4py" else real(name))
    monkeypatch.setattr(mpi, "mpirun", lambda: "/usr/bin/mpirun")
    monkeypatch.setattr(mpi, "cpu_threads", lambda: 6)


def test_one_rank_per_cpu_at_most_one_per_row(installed):
    assert mpi.default_ranks(12, "numpy") == 6
    assert mpi.default_ranks(4, "numpy") == 4
    assert mpi.default_ranks(1, "numpy") == 1


def test_one_process_on_the_gpu_or_without_mpi(installed, monkeypatch):
    assert mpi.default_ranks(12, "cupy") == 1
    monkeypatch.setattr(mpi, "mpirun", lambda: None)
    assert mpi.default_ranks(12, "numpy") == 1
    monkeypatch.setattr(mpi, "mpirun", lambda: "/usr/bin/mpirun")
    monkeypatch.setattr(mpi.importlib.util, "find_spec", lambda name: None)
    assert mpi.default_ranks(12, "numpy") == 1


def test_the_command_it_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(mpi, "mpirun", lambda: "/opt/ompi/bin/mpirun")
    monkeypatch.setattr(mpi, "_implementation", lambda runner: "openmpi")

    class Job:  # what launch starts: mpirun, its stderr read through _relay
        def __init__(self, cmd, **kw):
            calls.append((cmd, kw))
            self.stderr = open(os.devnull, "rb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stderr.close()

        def wait(self):
            return 7

    monkeypatch.setattr(mpi.subprocess, "Popen", Job)
    monkeypatch.setattr(mpi.os, "cpu_count", lambda: 2)
    assert mpi.launch(3, ["train", "--max_iters=5"]) == 7
    cmd, kw = calls[0]
    root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    assert cmd == ["/opt/ompi/bin/mpirun", *root, "--oversubscribe", "-n", "3", sys.executable, "-m", "scratchllm",
                   "train", "--max_iters=5"]
    assert kw["preexec_fn"] is (mpi._end_with_parent if sys.platform == "linux" else None)
    assert kw["stderr"] is mpi.subprocess.PIPE
    monkeypatch.setattr(mpi, "mpirun", lambda: None)
    with pytest.raises(ValueError, match=r"--nproc=3 needs mpirun or mpiexec: pip install scratchllm\[mpi\]"):
        mpi.launch(3, ["train"])


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_ends_when_the_launcher_is_killed(tmp_path):
    """A launcher (here a Python that starts ``sleep`` as launch starts mpirun) killed by SIGKILL: its child
    gets SIGTERM from the kernel instead of living on (mpirun, so ending, ends the ranks)."""
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys\n"
            "from scratchllm.parallel.mpi import _end_with_parent\n"
            "p = subprocess.Popen(['sleep', '300'], preexec_fn=_end_with_parent)\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "p.wait()\n")
    launcher = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by init soon, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


RULE = b"-" * 74 + b"\n"
BOX = RULE + b"prterun detected that one or more processes exited with non-zero status,\n   Exit code: 2\n" + RULE


def relayed(data: bytes, cut: int) -> bytes:
    """What ``_relay`` passes on of ``data`` written into a pipe in pieces of ``cut`` bytes."""
    import io
    import threading

    read, write = os.pipe()

    def feed():
        for i in range(0, len(data), cut):
            os.write(write, data[i:i + cut])
            time.sleep(0.001)
        os.close(write)

    feeder = threading.Thread(target=feed)
    feeder.start()
    out = io.BytesIO()
    mpi._relay(read, out)
    feeder.join()
    os.close(read)
    return out.getvalue()


@pytest.mark.parametrize("cut", [1, 7, 4096])
def test_mpiruns_boxes_are_dropped_after_a_ranks_error_line_only(cut):
    progress = b"\r  0%|   | 0/3 [00:00<?, ?it/s]\r 33%|#  | 1/3\n"
    assert relayed(progress + BOX + b"tail", cut) == progress + BOX + b"tail"  # no error said: all of it
    error = b"scratchllm: error: data path /x does not exist\n"
    assert relayed(progress + error + BOX + BOX + b"\0", cut) == progress + error  # Open MPI's NUL too
    assert relayed(error + RULE + b"cut short", cut) == error + RULE + b"cut short"  # an unclosed box: kept


def test_a_progress_bar_is_passed_on_before_its_line_ends():
    """The bar's \\r updates have no newline: they go out as they come, not at the end of the line."""
    read, write = os.pipe()
    import io
    import threading

    out = io.BytesIO()
    relay = threading.Thread(target=mpi._relay, args=(read, out))
    relay.start()
    os.write(write, b"\r 50%|#####     |")
    deadline = time.time() + 10
    while out.getvalue() != b"\r 50%|#####     |" and time.time() < deadline:
        time.sleep(0.01)
    assert out.getvalue() == b"\r 50%|#####     |"
    os.close(write)
    relay.join()
    os.close(read)


def test_a_process_no_launcher_started_does_not_start_mpi():
    """Without mpirun's variables world() is None and mpi4py stays unimported: an MPI "singleton" would cost
    start-up time and take SIGHUP over (a closed terminal would no longer end the run)."""
    code = ("import sys, signal\n"
            "from scratchllm.parallel.mpi import world\n"
            "print(world(), 'mpi4py.MPI' in sys.modules, signal.getsignal(signal.SIGHUP) == signal.SIG_DFL)\n")
    env = {k: v for k, v in os.environ.items() if k not in mpi.RANK_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.split() == ["None", "False", "True"], done.stderr
