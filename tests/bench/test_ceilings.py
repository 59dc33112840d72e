"""bench/ceilings.py: a row is compared with the bandwidth of the level its working set fits in, never above
100 % of the ceiling it names (synthetic timings, drawn by hypothesis)."""

from hypothesis import given
from hypothesis import strategies as st

from scratchllm.bench import ceilings
from scratchllm.bench.ops import derive

MB = 2**20


def peak(l2=80.0, llc=60.0, dram=25.0):
    levels = {"L2": {"bytes": 1 * MB, "copy_gbs": l2, "add_gbs": l2 * 0.9},
              "LLC": {"bytes": 8 * MB, "copy_gbs": llc, "add_gbs": llc},
              "DRAM": {"bytes": 256 * MB, "copy_gbs": dram, "add_gbs": dram * 1.2}}
    return {"gemm_n": 8, "peak_gflops": 100.0, "peak_gbs": l2, "levels": levels}


def test_a_row_meets_the_ceiling_of_its_working_set_or_the_faster_one_that_explains_it():
    p = peak()
    assert ceilings.ceiling_for(p, 100 * MB, 20.0) == {"level": "DRAM", "gbs": 30.0, "note": ""}
    assert ceilings.ceiling_for(p, 4 * MB, 50.0)["level"] == "LLC"
    hot = ceilings.ceiling_for(p, 100 * MB, 45.0)  # a repeat that found its data in the LLC
    assert hot["level"] == "LLC" and "hot" in hot["note"]
    assert ceilings.ceiling_for(p, 512 * 1024, 70.0)["level"] == "L2"
    over = ceilings.ceiling_for(p, 512 * 1024, 500.0)
    assert over["level"] == "L2" and "check the byte model" in over["note"]


def test_a_row_fits_a_level_by_the_caches_capacity_not_one_stream_array():
    p = peak()
    p["levels"]["LLC"]["capacity"] = 32 * MB  # the LLC holds 32 MB; its STREAM arrays were 8 MB each
    assert ceilings.ceiling_for(p, 25 * MB, 50.0) == {"level": "LLC", "gbs": 60.0, "note": ""}


def test_a_slower_measured_small_level_does_not_lower_the_ceiling():
    p = peak(l2=40.0, llc=60.0)  # L2's small arrays paid more call overhead than the LLC's
    assert ceilings.ceiling_for(p, 512 * 1024, 55.0)["gbs"] == 60.0


@given(l2=st.floats(5, 500), llc=st.floats(5, 500), dram=st.floats(1, 100), nbytes=st.integers(1, 10**10),
       frac=st.floats(0.001, 1.0))
def test_no_row_exceeds_100_percent_of_its_stated_ceiling(l2, llc, dram, nbytes, frac):
    """Any row moving its bytes no faster than the fastest measured level stays within its ceiling."""
    p = peak(l2, llc, dram)
    top = max(max(v["copy_gbs"], v["add_gbs"]) for v in p["levels"].values())
    c = ceilings.ceiling_for(p, nbytes, frac * top)
    assert frac * top <= c["gbs"] * (1 + 1e-12) and c["note"] != "above every measured bandwidth: check the byte model"


def test_derive_names_the_ceiling_and_stays_within_it():
    ms = lambda v: {"median_ms": v, "samples_ms": [v]}  # noqa: E731
    rows = [{"op": "layernorm", "sizes": dict(N=4096, C=768), "backend": "numpy", "device": "cpu", "dtype": "float32",
             "shapes": "x", "fwd": ms(0.6), "bwd": ms(0.9), "torch": None}]  # 42 GB/s: above DRAM's 30
    derive(rows, {"cpu": peak()})
    r = rows[0]
    for k in ("fwd", "bwd"):
        assert r["pct_peak"][k][0] <= 100 and r["pct_peak"][k][1] == "B"
        assert r["ceiling"][k]["level"] == "LLC" and "hot" in r["ceiling"][k]["note"]
    rows[0]["fwd"] = ms(0.1)  # 252 GB/s: faster than anything measured, and said so
    derive(rows, {"cpu": peak()})
    assert rows[0]["pct_peak"]["fwd"][0] > 100 and "byte model" in rows[0]["ceiling"]["fwd"]["note"]


def test_the_stream_sets_grow_from_l2_to_dram():
    sets = ceilings.working_sets(threads=2, l2_kb=1024, llc_kb=32768)
    assert sets["L2"] < sets["LLC"] < sets["DRAM"] and sets["DRAM"] >= 256 * MB
    measured = ceilings.stream(2, l2_kb=256, llc_kb=1024, timing={"warmup_s": 0, "min_time_s": 0.01})
    assert all(v["copy_gbs"] > 0 and v["add_gbs"] > 0 for v in measured.values())
