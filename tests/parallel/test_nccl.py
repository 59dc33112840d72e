"""The NCCL path of MPIDataParallel (scratchllm/parallel/nccl.py). Without a GPU: its setup with stand-ins for
NCCL, CuPy and the MPI communicator of several ranks (the id drawn by rank 0 and broadcast, one communicator per
rank, the calls it makes, one GPU per rank). With one (marked ``gpu``): a real one-rank communicator, whose step
equals the model's own."""

import numpy as np
import pytest

from scratchllm.parallel import nccl as nccl_mod


class FakeComm:
    """Rank ``rank`` of ``size`` ranks made one after another; ``bcast`` from rank 0 reaches the later ones."""

    sent = {}

    def __init__(self, rank, size, local=None):
        self.rank, self.size, self.local = rank, size, local

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def bcast(self, obj, root=0):
        if self.rank == root:
            FakeComm.sent["last"] = obj
        return FakeComm.sent["last"]

    def Split_type(self, kind):
        return self.local


class FakeNccl:
    available, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = True, 7, 8, 0

    def __init__(self):
        self.ids, self.comms = 0, []

    def get_unique_id(self):
        self.ids += 1
        return tuple(range(self.ids, self.ids + 128))

    def NcclCommunicator(self, ndev, uid, rank):
        calls = []
        self.comms.append((ndev, uid, rank, calls))
        return type("Comm", (), {"allReduce": lambda s, *a: calls.append(("allReduce", *a)),
                                 "bcast": lambda s, *a: calls.append(("bcast", *a))})()


class FakeCupy:
    class cuda:
        @staticmethod
        def get_current_stream():
            return type("Stream", (), {"ptr": 4242})()


class FakeArray:
    def __init__(self, dtype, size, contiguous=True):
        self.dtype, self.size = np.dtype(dtype), size
        self.flags = type("Flags", (), {"c_contiguous": contiguous})()
        self.data = type("Mem", (), {"ptr": 1000 + size})()


def test_every_rank_joins_the_communicator_rank_0_named():
    fake = FakeNccl()
    ranks = [nccl_mod.NcclCollectives(FakeComm(r, 3), nccl=fake, cupy=FakeCupy) for r in range(3)]
    assert fake.ids == 1  # drawn once, by rank 0
    uid = fake.comms[0][1]
    assert [(n, u, r) for n, u, r, _ in fake.comms] == [(3, uid, 0), (3, uid, 1), (3, uid, 2)]
    ranks[1].allreduce(FakeArray("float32", 10))
    ranks[2].bcast(FakeArray("float64", 5))
    assert fake.comms[1][3] == [("allReduce", 1010, 1010, 10, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 4242)]
    assert fake.comms[2][3] == [("bcast", 1005, 5, FakeNccl.NCCL_FLOAT64, 0, 4242)]


def test_what_it_refuses():
    with pytest.raises(TypeError, match="NCCL sums contiguous float32/float64 buffers; got int64"):
        nccl_mod.NcclCollectives(FakeComm(0, 1), nccl=FakeNccl(), cupy=FakeCupy).allreduce(FakeArray("int64", 3))
    with pytest.raises(TypeError, match="contiguous False"):
        nccl_mod.NcclCollectives(FakeComm(0, 1), nccl=FakeNccl(), cupy=FakeCupy).bcast(FakeArray("float32", 3, False))
    without = FakeNccl()
    without.available = False
    with pytest.raises(RuntimeError, match="CuPy was built without NCCL"):
        nccl_mod.NcclCollectives(FakeComm(0, 1), nccl=without, cupy=FakeCupy)


def test_one_gpu_per_rank_of_the_node():
    pytest.importorskip("mpi4py")

    class Runtime:
        def __init__(self, gpus):
            self.gpus, self.current = gpus, None

        def getDeviceCount(self):
            return self.gpus

        def setDevice(self, d):
            self.current = d

    rt = Runtime(4)
    assert nccl_mod.use_gpu_of_rank(FakeComm(5, 8, local=FakeComm(1, 4)), rt) == 1 and rt.current == 1
    with pytest.raises(ValueError, match=r"3 ranks on this node but 2 GPU\(s\): run one rank per GPU \(--nproc=2\)"):
        nccl_mod.use_gpu_of_rank(FakeComm(0, 3, local=FakeComm(0, 3)), Runtime(2))


@pytest.mark.gpu
def test_one_rank_on_a_gpu_takes_the_models_own_step():
    """A real NCCL communicator of one rank: the broadcast and the sum leave the numbers as they are, so the
    loss and every gradient equal the model's own pass."""
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    from scratchllm.backend import to_numpy
    from scratchllm.model import GPT, GPTConfig
    from scratchllm.parallel.mpi import MPIDataParallel

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, seed=0, dtype="float64", backend="cupy")
    idx, targets = (model.xp.asarray(a) for a in np.random.default_rng(0).integers(0, 13, (2, 4, 8)))
    _, loss1, cache1 = model.forward(idx, targets)
    grads1 = {k: to_numpy(v).copy() for k, v in model.backward(cache1).items()}
    dp = MPIDataParallel(model, MPI.COMM_SELF)
    assert dp.gpu is not None
    _, loss, cache = dp.forward(idx, targets)
    grads = dp.backward(cache)
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-14)
    for name, g in grads.items():
        np.testing.assert_allclose(to_numpy(g), grads1[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_a_gpu_model_takes_nccl_for_its_parameters_and_gradients(monkeypatch):
    """The wiring, on the host: a model that says it is on CuPy gets NcclCollectives (here a recorder; one rank,
    so the numbers stay), which broadcasts the flat parameter buffer once and sums the flat gradient buffer
    once per step; the loss's two numbers stay on MPI."""
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    from scratchllm.model import GPT, GPTConfig
    from scratchllm.parallel import mpi

    calls = []

    class Recorder:
        def __init__(self, comm):
            calls.append(("init", comm.Get_size()))

        def allreduce(self, a):
            calls.append(("allreduce", a.size))

        def bcast(self, a):
            calls.append(("bcast", a.size))

    monkeypatch.setattr(mpi, "NcclCollectives", Recorder)
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg, seed=0, dtype="float64", backend="numpy")
    idx, targets = np.random.default_rng(0).integers(0, 13, (2, 3, 8))
    _, loss1, cache1 = model.forward(idx, targets)
    grads1 = model.backward(cache1)
    model.backend = "cupy"  # what the runner reads to choose; the arrays stay NumPy's
    dp = mpi.MPIDataParallel(model, MPI.COMM_SELF)
    _, loss, cache = dp.forward(idx, targets)
    grads = dp.backward(cache)
    n = model.num_params()
    assert calls == [("init", 1), ("bcast", n), ("allreduce", n)]
    assert float(loss) == pytest.approx(float(loss1), rel=1e-14)
    for name in grads1:
        np.testing.assert_allclose(grads[name], grads1[name], rtol=1e-12, atol=1e-15, err_msg=name)
