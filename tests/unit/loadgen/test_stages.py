"""Stage profiles: the ``[load] stages`` spec, the level and Locust shape ticks over time, and the
open-loop schedule through the cumulative rate (counts per window checked statistically)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from loadgen.spec import SpecError, Stage, parse_spec
from loadgen.stages import STEP_SPREAD_S, StageProfile, spawn_rates, users_reached

ROOT = Path(__file__).resolve().parents[3]


def stages_spec(stages: str, extra: str = "") -> str:
    return f"[load]\n{extra}stages = {stages}\n"


# ------------------------------------------------------------------------------ spec


def test_spec_parses_steady_and_ramp_stages_into_one_level_each() -> None:
    spec = parse_spec(
        stages_spec(
            "[{duration_s = 30, rate = 2}, {duration_s = 20, rate_from = 1, rate_to = 8}]",
            'arrival = "constant"\n',
        )
    )
    assert spec.load.mode == "stages"
    assert spec.load.stages == (Stage(30.0, "rate", 2.0, 2.0), Stage(20.0, "rate", 1.0, 8.0))
    levels = spec.levels()
    assert [(lv.mode, lv.value, lv.arrival, lv.stage) for lv in levels] == [
        ("rate", 2.0, "constant", 0),
        ("rate", 4.5, "constant", 1),  # a ramp's level is its mean
    ]
    # Two stages at one level still get their own points.
    same = parse_spec(
        stages_spec("[{duration_s = 5, concurrency = 4}, {duration_s = 5, concurrency = 4}]")
    )
    assert len({lv.key for lv in same.levels()}) == 2
    assert same.levels()[0].arrival == "closed"


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("[]", "non-empty list"),
        ("[{rate = 2}]", "stage 0: duration_s must be a number > 0"),
        ("[{duration_s = 0, rate = 2}]", "stage 0: duration_s"),
        ("[{duration_s = 5}]", "stage 0: give a rate"),
        ("[{duration_s = 5, rate = 2, concurrency = 3}]", "not both"),
        ("[{duration_s = 5, rate = 2, rate_to = 3}]", "for a ramp"),
        ("[{duration_s = 5, rate_from = 2}]", "for a ramp"),
        ("[{duration_s = 5, rate = 0}]", "rate must be > 0"),
        ("[{duration_s = 5, concurrency = 2.5}]", "whole number"),
        (
            "[{duration_s = 5, concurrency_from = 0, concurrency_to = 4}]",
            "concurrency must be >= 1",
        ),
        ("[{duration_s = 5, rate = 2, users = 3}]", "unknown key"),
        ("[{duration_s = 5, rate = 2}, {duration_s = 5, concurrency = 2}]", "all stages"),
    ],
)
def test_spec_rejects_bad_stages_naming_the_key_and_line(stages: str, message: str) -> None:
    with pytest.raises(SpecError, match=r"<spec>:2: \[load\] stages") as err:
        parse_spec(stages_spec(stages))
    assert message in str(err.value)


def test_spec_rejects_stages_with_another_mode_and_stages_mode_without_stages() -> None:
    with pytest.raises(SpecError, match=r"<spec>:2: \[load\] mode: stages need"):
        parse_spec(stages_spec("[{duration_s = 5, rate = 2}]", 'mode = "rate"\n'))
    with pytest.raises(SpecError, match=r"\[load\] mode: mode = \"stages\" needs"):
        parse_spec('[load]\nmode = "stages"\n')


def test_a_rate_ramp_may_start_at_zero() -> None:
    spec = parse_spec(stages_spec("[{duration_s = 10, rate_from = 0, rate_to = 6}]"))
    assert spec.load.stages[0] == Stage(10.0, "rate", 0.0, 6.0)


# ------------------------------------------------------------------------------ profile


def step_ramp() -> StageProfile:
    return StageProfile(
        [
            Stage(10.0, "concurrency", 2, 2),
            Stage(5.0, "concurrency", 6, 6),
            Stage(8.0, "concurrency", 1, 9),
        ],
        lead_s=3.0,
    )


def test_levels_over_time_follow_lead_steps_and_ramps() -> None:
    p = step_ramp()
    assert p.total_s == 26.0
    assert p.windows() == [(3.0, 13.0), (13.0, 18.0), (18.0, 26.0)]
    assert p.level_at(0.0) == 2 and p.level_at(2.99) == 2  # the lead holds stage 0's start
    assert p.level_at(12.99) == 2 and p.level_at(13.0) == 6
    assert p.level_at(18.0) == 1 and p.level_at(22.0) == 5 and p.level_at(25.0) == 8
    assert p.level_at(30.0) == 9


def test_tick_returns_the_stage_users_at_the_right_times_then_stops() -> None:
    p = step_ramp()
    ticks = {
        t: p.tick(t, ramp_rate=4.0, step_rate=90.0, hold_s=5.0)
        for t in (0, 2.9, 3, 5, 12, 13, 17, 18, 20, 26, 31)
    }
    assert ticks == {
        0: (2, 4.0),  # the lead: the first users start over the ramp
        2.9: (2, 4.0),
        3: (2, 90.0),  # every later change is a step
        5: (2, 90.0),
        12: (2, 90.0),
        13: (6, 90.0),
        17: (6, 90.0),
        18: (1, 90.0),
        20: (3, 90.0),
        26: (9, 90.0),  # held after the end so in-flight requests finish
        31: (9, 90.0),
    }
    assert p.tick(31.01, ramp_rate=4.0, step_rate=90.0, hold_s=5.0) is None
    assert p.peak() == 9.0


def test_a_later_stage_step_reaches_its_users_within_one_tick() -> None:
    """2 users ramped in over 1.5 s, then a step to 24: the step's spawn rate is not the ramp's.

    Locust spawns at ``spawn_rate`` users/s from the tick that asks for them; the old shape
    reused 2 / 1.5 s = 1.3 users/s for every change, so a 4 s stage at 24 users reached 7.
    """
    p = StageProfile([Stage(4.0, "concurrency", 2, 2), Stage(4.0, "concurrency", 24, 24)], 2.0)
    ramp_rate, step_rate = spawn_rates(2, 1.5, p.peak())
    assert math.isclose(ramp_rate, 2 / 1.5)
    tick = p.tick(6.0, ramp_rate=ramp_rate, step_rate=step_rate)
    assert tick is not None
    users, rate = tick
    assert users == 24
    # Users running one tick (1 s) later, starting from stage 0's 2.
    assert min(users, 2 + math.floor(rate * 1.0)) == 24
    assert (24 - 2) / rate <= STEP_SPREAD_S < 1.0
    # The lead's ramp still spreads the first users over the probed request's duration.
    first = p.tick(0.0, ramp_rate=ramp_rate, step_rate=step_rate)
    assert first == (2, ramp_rate)
    assert spawn_rates(1, 0.0, 4.0) == (1 / STEP_SPREAD_S, 4 / STEP_SPREAD_S)


def test_users_reached_is_the_most_users_seen_inside_the_window() -> None:
    samples = [(9.9, 30), (10.0, 2), (10.5, 5), (11.9, 7), (12.0, 40)]
    assert users_reached(samples, (10.0, 12.0)) == 7
    assert users_reached(samples, (20.0, 22.0)) == 0


def test_stage_of_assigns_times_to_stages() -> None:
    p = step_ramp()
    got = p.stage_of([-1.0, 0.0, 2.9, 3.0, 12.9, 13.0, 25.9, 26.0, 40.0]).tolist()
    assert got == [-1, -1, -1, 0, 0, 1, 2, 3, 3]
    no_lead = StageProfile([Stage(2.0, "rate", 1, 1)])
    assert no_lead.stage_of([0.0, 1.9, 2.0]).tolist() == [0, 0, 1]


def test_cumulative_and_its_inverse_agree() -> None:
    p = StageProfile(
        [Stage(4.0, "rate", 2, 2), Stage(6.0, "rate", 0, 12), Stage(3.0, "rate", 10, 1)], lead_s=1.5
    )
    # Λ: lead 1.5 s x 2, 4 s x 2, the 0 -> 12 ramp (mean 6) x 6 s, 10 -> 1 (mean 5.5) x 3 s.
    assert math.isclose(p.cumulative(p.total_s), 3 + 8 + 36 + 16.5)
    assert math.isclose(p.cumulative(5.5 + 3.0), 11 + 0.5 * 2 * 3.0**2)  # 2 req/s² ramp
    s = np.linspace(0, p.cumulative(p.total_s), 997)
    t = p.inverse_cumulative(s)
    assert np.all(np.diff(t) >= 0)
    assert np.allclose([p.cumulative(float(x)) for x in t], s, atol=1e-9)


def test_ramp_schedule_has_the_right_counts_per_second_window() -> None:
    """A 2 -> 60 req/s Poisson ramp over 30 s: counts per 1 s ~ Poisson(Λ(b) - Λ(a))."""
    p = StageProfile([Stage(30.0, "rate", 2, 60)])
    times = p.schedule("poisson", seed=4)
    edges = np.arange(31.0)
    counts, _ = np.histogram(times, bins=edges)
    expected = np.array([p.cumulative(b) - p.cumulative(a) for a, b in itertools.pairwise(edges)])
    assert math.isclose(expected.sum(), 930.0)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(0.999, df=len(counts)), (chi2, counts, expected)
    # The count rises with the rate: the last third far above the first.
    assert counts[20:].sum() > 3 * counts[:10].sum()


def test_constant_ramp_schedule_is_within_one_of_the_expected_count_everywhere() -> None:
    p = StageProfile([Stage(5.0, "rate", 4, 4), Stage(10.0, "rate", 4, 24)], lead_s=2.0)
    times = p.schedule("constant")
    for a in np.arange(0.0, 17.0):
        n = int(((times >= a) & (times < a + 1)).sum())
        assert abs(n - (p.cumulative(a + 1) - p.cumulative(a))) <= 1.0, a
    assert times.size == math.ceil(p.cumulative(p.total_s))


def test_gamma_through_a_profile_keeps_its_dispersion() -> None:
    p = StageProfile([Stage(400.0, "rate", 20, 20)])
    times = p.schedule("gamma", burstiness=0.25, seed=2)
    counts = np.bincount(times.astype(int))
    assert counts.var(ddof=1) / counts.mean() > 2.5  # Poisson would give 1


# ------------------------------------------------------------------------------ Locust shape

SHAPE_CHILD = textwrap.dedent(
    """
    import json, time
    from loadgen.profile import StageShape
    from loadgen.spec import Stage
    from loadgen.stages import StageProfile
    from locust import LoadTestShape

    profile = StageProfile(
        [Stage(4.0, "concurrency", 3, 3), Stage(4.0, "concurrency", 1, 5)], lead_s=2.0
    )
    origin = time.time() - 100.0
    shape = StageShape(profile, origin, ramp_rate=3.0, step_rate=8.0, hold_s=1.0)
    out = {"is_shape": isinstance(shape, LoadTestShape), "ticks": {}}
    clock = [0.0]
    shape.get_run_time = lambda: clock[0]
    for t in (0.0, 1.96, 5.96, 6.0, 8.0, 10.0, 10.9, 11.0):
        clock[0] = t
        out["ticks"][str(t)] = shape.tick()
    print(json.dumps(out))
    """
)


def test_locust_shape_ticks_the_profile_users() -> None:
    """The real ``LoadTestShape`` subclass, in a child (Locust's gevent patching stays out)."""
    proc = subprocess.run(
        [sys.executable, "-c", SHAPE_CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["is_shape"]
    ticks = {k: (tuple(v) if v is not None else None) for k, v in out["ticks"].items()}
    assert ticks == {
        "0.0": (3, 3.0),  # the lead ramps the first users in
        "1.96": (3, 8.0),  # a tick just before the boundary looks 50 ms ahead
        "5.96": (1, 8.0),
        "6.0": (1, 8.0),
        "8.0": (3, 8.0),
        "10.0": (5, 8.0),
        "10.9": (5, 8.0),
        "11.0": None,
    }


# ------------------------------------------------------------------------------ stage window


def test_a_stage_point_divides_by_its_own_window_not_its_rows_span() -> None:
    """Rows of a 4 s stage whose last request ends 1.5 s after it: 8 ok / 4 s = 2 req/s."""
    from loadgen.results import REQUEST_COLUMNS, Col, Point
    from loadgen.spec import LoadLevel, SLOSpec
    from loadgen.summary import summarize_point

    rows = []
    for i in range(8):
        row = dict.fromkeys(REQUEST_COLUMNS, math.nan)
        sent = 100.0 + 0.5 * i
        row |= {
            Col.OK: True,
            Col.SENT_AT: sent,
            Col.FINISHED_AT: sent + (2.0 if i == 7 else 0.2),
            Col.TTFT_S: 0.05 if i < 6 else 0.9,
            Col.E2E_S: 0.2,
            Col.COMPLETION_TOKENS: 4,
            Col.ITL_S: [0.01, 0.01, 0.01],
            Col.SCHEDULE_LAG_S: 0.0,
            Col.ERROR: "",
        }
        rows.append(row)
    level = LoadLevel("rate", 2.0, "constant", stage=1)
    kw = {"level": level, "lag_threshold_s": 0.05, "min_samples": 1}
    staged = summarize_point(rows, **kw, slo=SLOSpec(ttft_p95_s=0.5), duration_s=4.0)
    assert staged[Point.DURATION_S] == 4.0
    assert math.isclose(staged[Point.ACHIEVED_RPS], 2.0)
    assert math.isclose(staged[Point.GOODPUT_RPS], 6 / 4.0)  # two requests missed the TTFT
    spanned = summarize_point(rows, **kw)
    assert math.isclose(spanned[Point.DURATION_S], 3.5 + 2.0)  # first send to last finish
