"""bench/timing.py: sampling by time, the summary's interval and flags, ratios with intervals."""

import time

import numpy as np
import pytest

from scratchllm.bench import timing


def test_measure_samples_for_the_time_budget_after_a_warm_up():
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(2e-3)

    t = timing.measure(fn, repeats=3, warmup_s=0.02, min_time_s=0.06)
    assert t["number"] == 1 and t["repeats"] >= 3
    assert sum(t["samples_ms"]) >= 60  # samples until the budget is spent
    assert len(calls) >= t["repeats"] + 2 and calls[len(calls) - t["repeats"] - 1] - calls[0] >= 0.015  # warm-up
    lo, hi = t["ci95_ms"]
    assert lo <= t["median_ms"] <= hi and t["flags"] == [] or "noisy" in t["flags"]


def test_summary_flags_noise_and_drift_and_its_interval_narrows_with_samples():
    rng = np.random.default_rng(0)
    steady = timing.summarize(1e-3 * (1 + 0.01 * rng.standard_normal(60)))
    assert steady["flags"] == [] and steady["ci95_ms"][0] < 1.0 < steady["ci95_ms"][1]
    wide = timing.summarize(1e-3 * (1 + 0.3 * rng.standard_normal(60)))
    assert "noisy" in wide["flags"]
    contended = timing.summarize(np.r_[0.5e-3, 0.6e-3, np.full(20, 8e-3)])  # OpenMP waiting for scheduler ticks
    assert "bimodal" in contended["flags"] and "bimodal" not in steady["flags"]
    drifting = timing.summarize(1e-3 * np.linspace(1.0, 1.6, 60))  # a machine that got busier
    assert "drift" in drifting["flags"] and drifting["drift"] > 0.3
    few = timing.summarize(1e-3 * (1 + 0.05 * rng.standard_normal(8)))
    many = timing.summarize(1e-3 * (1 + 0.05 * rng.standard_normal(400)))
    width = lambda t: t["ci95_ms"][1] - t["ci95_ms"][0]  # noqa: E731
    assert width(many) < width(few) / 2


def test_ratio_interval_covers_the_ratio_and_excludes_one_when_the_sides_differ():
    rng = np.random.default_rng(1)
    a = timing.summarize(2e-3 * (1 + 0.02 * rng.standard_normal(50)))
    b = timing.summarize(1e-3 * (1 + 0.02 * rng.standard_normal(50)))
    r = timing.ratio_ci([a], [b])
    assert r["ci95"][0] <= r["ratio"] <= r["ci95"][1] and r["ci95"][0] > 1.9 and r["ci95"][1] < 2.1
    same = timing.ratio_ci([a, b], [a, b])  # fwd + bwd against itself
    assert same["ratio"] == pytest.approx(1.0) and same["ci95"][0] < 1.0 < same["ci95"][1]


def test_the_cpu_flush_overwrites_a_buffer_larger_than_the_caches():
    flush = timing.l2_flusher("cpu", mb=8)
    flush()  # runs: the LLC option (--flush-l2) on the CPU


def test_an_interval_over_processes_holds_their_spread():
    """Three processes whose medians differ by 20 %: resampling the processes widens the interval to cover it."""
    rng = np.random.default_rng(2)
    groups = [1e-3 * level * (1 + 0.01 * rng.standard_normal(30)) for level in (1.0, 1.1, 1.2)]
    samples = np.concatenate(groups)
    flat = timing.summarize(samples)
    nested = timing.summarize(samples, groups=[30, 30, 30])
    width = lambda t: t["ci95_ms"][1] - t["ci95_ms"][0]  # noqa: E731
    assert width(nested) > 3 * width(flat) and nested["median_ms"] == flat["median_ms"]
