"""Sweep spec parsing: the documented example, the cross product, levels, and errors that name
the offending key and its line."""

from __future__ import annotations

import math
import re
import textwrap
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

import loadgen
from loadgen.spec import (
    LengthDist,
    LoadLevel,
    LoadSpec,
    RunSpec,
    ServerConfig,
    ServerSpec,
    SLOSpec,
    SpecError,
    TargetSpec,
    WorkloadSpec,
    load_spec,
    parse_spec,
)

EXAMPLE = Path(loadgen.__file__).parent / "examples" / "sweep.toml"


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def spec_error(tmp_path: Path, text: str) -> str:
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


# ------------------------------------------------------------------------------ the example


def test_example_spec_parses_with_its_documented_values() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.path == str(EXAMPLE)
    assert spec.text == EXAMPLE.read_text()
    assert spec.run == RunSpec(
        name="example",
        duration_s=20.0,
        warmup_s=3.0,
        max_requests=2000,
        repeats=1,
        seed=42,
        lag_threshold_s=0.05,
        min_samples=20,
        request_timeout_s=120.0,
    )
    assert spec.target.kind == "local"
    assert spec.target.engine == "ctranslate2"
    assert spec.target.urls == ()
    assert spec.server.replicas == (1, 2)
    assert spec.server.max_batch_delay_ms == (5.0,)
    assert spec.server.env == {}
    assert spec.load.mode == "concurrency"
    assert spec.load.concurrency == (1, 4, 8)
    assert spec.workload.input_tokens == LengthDist(dist="uniform", min=32, max=96)
    assert spec.workload.output_tokens == LengthDist(dist="fixed", value=32, min=32, max=32)
    assert spec.slo == SLOSpec(ttft_p95_s=1.0, tpot_p95_s=0.2, e2e_p95_s=30.0, max_error_rate=0.01)
    assert spec.target_rps == 4.0
    assert [c.config_id for c in spec.configs()] == ["r1-b8-d5-w1-t1-int8", "r2-b8-d5-w1-t1-int8"]
    assert [lv.key for lv in spec.levels()] == [
        "concurrency=1/closed",
        "concurrency=4/closed",
        "concurrency=8/closed",
    ]


@pytest.mark.parametrize(
    ("section", "cls"),
    [
        ("run", RunSpec),
        ("target", TargetSpec),
        ("server", ServerSpec),
        ("load", LoadSpec),
        ("workload", WorkloadSpec),
        ("slo", SLOSpec),
    ],
)
def test_example_documents_every_key(section: str, cls: type) -> None:
    # The example is the reference ("every key, commented"): each field of the section is set,
    # or shown in a comment when it is optional (e.g. [server] configs).
    table = tomllib.loads(EXAMPLE.read_text())[section]
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"[{section}]"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    commented = {
        m.group(1) for line in lines[start:end] if (m := re.match(r"^#\s*([a-z_]+)\s*=", line))
    }
    names = {f.name for f in fields(cls)}
    assert set(table) <= names
    assert names - set(table) <= commented, names - set(table) - commented


def test_empty_spec_uses_defaults() -> None:
    spec = parse_spec("")
    assert spec.run == RunSpec()
    assert spec.target == TargetSpec()
    assert spec.target_rps is None
    assert len(spec.configs()) == 1
    assert [lv.value for lv in spec.levels()] == [1.0, 4.0, 8.0]


# ------------------------------------------------------------------------------ cross product


def test_configs_are_the_cross_product_in_spec_order() -> None:
    spec = parse_spec(
        textwrap.dedent(
            """
            [server]
            replicas = [1, 2]
            max_batch_size = [4, 8, 16]
            max_batch_delay_ms = [0, 2.5]
            batch_workers = 1
            intra_threads = [1, 2]
            quantization = ["int8", "float32"]
            """
        )
    )
    configs = spec.configs()
    assert len(configs) == 2 * 3 * 2 * 1 * 2 * 2
    assert len({c.config_id for c in configs}) == len(configs)
    # The first dimension varies slowest, the last fastest.
    assert configs[0] == ServerConfig(1, 4, 0.0, 1, 1, "int8")
    assert configs[1] == ServerConfig(1, 4, 0.0, 1, 1, "float32")
    assert configs[-1] == ServerConfig(2, 16, 2.5, 1, 2, "float32")
    assert configs[-1].config_id == "r2-b16-d2.5-w1-t2-float32-adaptive"  # the default policy
    # A scalar is a one-element dimension; integers in a float list become floats.
    assert spec.server.batch_workers == (1,)
    assert spec.server.max_batch_delay_ms == (0.0, 2.5)
    assert all(isinstance(d, float) for d in spec.server.max_batch_delay_ms)


def test_listed_configs_replace_the_cross_product() -> None:
    spec = parse_spec(
        textwrap.dedent(
            """
            [server]
            replicas = [1, 2, 4]
            max_batch_size = [8, 16]
            max_batch_delay_ms = [5]
            configs = [
                { replicas = 1, max_batch_size = 8 },
                { replicas = 2, max_batch_delay_ms = 0, quantization = "float32" },
                { max_batch_size = 16, intra_threads = 2, batch_workers = 2 },
            ]
            """
        )
    )
    assert spec.configs() == [
        ServerConfig(1, 8, 5.0, 1, 1, "int8"),
        ServerConfig(2, 8, 0.0, 1, 1, "float32"),
        ServerConfig(1, 16, 5.0, 2, 2, "int8"),  # unlisted keys: the first listed value
    ]


@pytest.mark.parametrize(
    "entry",
    [
        "{ replica = 1 }",
        '{ replicas = "2" }',
        "{ replicas = true }",
        "{ replicas = 0 }",
        "{ max_batch_size = -8 }",
        "{ max_batch_delay_ms = -1 }",
        '{ quantization = "int4" }',
    ],
)
def test_bad_listed_config_names_key_and_line(tmp_path: Path, entry: str) -> None:
    msg = spec_error(tmp_path, f"[server]\nreplicas = [1]\nconfigs = [{entry}]\n")
    assert "spec.toml:3: [server] configs: entry 0" in msg


def test_empty_listed_configs_are_rejected(tmp_path: Path) -> None:
    assert "[server] configs" in spec_error(tmp_path, "[server]\nconfigs = []\n")
    assert "[server] configs" in spec_error(tmp_path, "[server]\nconfigs = [1, 2]\n")


# ------------------------------------------------------------------------------ levels


def test_concurrency_levels_are_closed_loop() -> None:
    spec = parse_spec('[load]\nmode = "concurrency"\nconcurrency = [2, 16]\n')
    assert spec.levels() == [
        LoadLevel("concurrency", 2.0, "closed"),
        LoadLevel("concurrency", 16.0, "closed"),
    ]
    assert spec.levels()[1].key == "concurrency=16/closed"


@pytest.mark.parametrize("arrival", ["poisson", "constant"])
def test_rate_levels_carry_the_arrival_process(arrival: str) -> None:
    spec = parse_spec(f'[load]\nmode = "rate"\nrate = [0.5, 3]\narrival = "{arrival}"\n')
    assert spec.levels() == [
        LoadLevel("rate", 0.5, arrival),  # type: ignore[arg-type]
        LoadLevel("rate", 3.0, arrival),  # type: ignore[arg-type]
    ]
    assert spec.levels()[0].key == f"rate=0.5/{arrival}"


def test_auto_mode_has_no_explicit_levels() -> None:
    spec = parse_spec('[load]\nmode = "auto"\nauto_points = 3\n')
    assert spec.levels() == []
    assert spec.load.auto_points == 3


# ------------------------------------------------------------------------------ errors


def test_wrong_type_in_concurrency_names_key_and_line(tmp_path: Path) -> None:
    msg = spec_error(
        tmp_path,
        """
        [run]
        name = "x"
        duration_s = 2

        [load]
        mode = "concurrency"
        concurrency = "8"
        """,
    )
    assert msg.startswith(f"{tmp_path / 'spec.toml'}:7: ")
    assert "spec.toml:7" in msg
    assert "[load] concurrency" in msg
    assert "'8'" in msg


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("[load]\nconcurrency = [1, 0]\n", 2, "[load] concurrency"),
        ("[load]\nconcurrency = [1, true]\n", 2, "[load] concurrency"),
        ("[load]\nconcurrency = []\n", 2, "[load] concurrency"),
        ("[load]\nrate = [-1.0]\n", 2, "[load] rate"),
        ('[run]\nseed = 1\nduration_s = "20"\n', 3, "[run] duration_s"),
        ("[run]\nduration_s = 0\n", 2, "[run] duration_s"),
        ("[run]\nmax_requests = 1.5\n", 2, "[run] max_requests"),
        ("[run]\nrepeats = true\n", 2, "[run] repeats"),
        ('[target]\nengine = "vllm"\n', 2, "[target] engine"),
        ('[target]\nurls = ["ftp://x"]\n', 2, "[target] urls"),
        ("[server]\n\nenv = { a = [1] }\n", 3, "[server] env"),
        ('[server]\nquantization = ["int4"]\n', 2, "[server] quantization"),
        ('[load]\nmode = "open"\n', 2, "[load] mode"),
        ("[slo]\nttft_p95_s = -1\n", 2, "[slo] ttft_p95_s"),
        ("[report]\ntarget_rps = 0\n", 2, "[report] target_rps"),
        ("run = 3\n", 0, "[run]"),
    ],
)
def test_bad_values_name_key_and_line(tmp_path: Path, text: str, line: int, key: str) -> None:
    msg = spec_error(tmp_path, text)
    where = f"spec.toml:{line}: " if line else "spec.toml: "
    assert where in msg
    assert key in msg


def test_unknown_key_names_it_and_lists_known_keys(tmp_path: Path) -> None:
    msg = spec_error(
        tmp_path,
        """
        [run]
        name = "x"
        duraton_s = 3.0
        """,
    )
    assert "spec.toml:3: [run] duraton_s: unknown key" in msg
    assert "'duration_s'" in msg


def test_unknown_key_in_report_is_rejected(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, "[report]\ntarget_rps = 2.0\ntarget = 3\n")
    assert "spec.toml:3: [report] target: unknown key" in msg


def test_unknown_section_names_it_and_its_line(tmp_path: Path) -> None:
    msg = spec_error(
        tmp_path,
        """
        [run]
        name = "x"

        [lod]
        mode = "rate"
        """,
    )
    assert "spec.toml:4: unknown section [lod]" in msg
    assert "'load'" in msg


@pytest.mark.parametrize(
    "value",
    [
        '{ dist = "zipf", value = 3 }',
        '{ dist = "fixed", min = 3 }',
        '{ dist = "uniform", min = 10 }',
        '{ dist = "uniform", min = 10, max = 5 }',
        '{ dist = "normal", mean = 10, std = -1, min = 1, max = 20 }',
        '{ dist = "fixed", value = "64" }',
        '"64"',
        "0",
    ],
)
def test_bad_length_distribution_names_key_and_line(tmp_path: Path, value: str) -> None:
    msg = spec_error(
        tmp_path,
        f"""
        [workload]
        api = "chat"
        input_tokens = {value}
        """,
    )
    assert "spec.toml:3: [workload] input_tokens:" in msg


def test_length_distributions_parse() -> None:
    spec = parse_spec(
        textwrap.dedent(
            """
            [workload]
            input_tokens = 17
            output_tokens = { dist = "normal", mean = 40, std = 8, min = 10, max = 64 }
            """
        )
    )
    assert spec.workload.input_tokens == LengthDist(dist="fixed", value=17, min=17, max=17)
    assert spec.workload.output_tokens == LengthDist(
        dist="normal", mean=40.0, std=8.0, min=10, max=64
    )


def test_remote_target_without_urls_is_rejected(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, '[target]\nkind = "remote"\n')
    assert "[target] urls" in msg
    assert "needs at least one URL" in msg
    msg = spec_error(tmp_path, '[target]\nkind = "remote"\nurls = []\n')
    assert "spec.toml:3: [target] urls" in msg


def test_remote_target_urls_are_normalised() -> None:
    spec = parse_spec('[target]\nkind = "remote"\nurls = ["http://h:8000/", "https://g"]\n')
    assert spec.target.urls == ("http://h:8000", "https://g")


def test_invalid_toml_reports_file_and_line(tmp_path: Path) -> None:
    msg = spec_error(
        tmp_path,
        """
        [run]
        name = "x"
        duration_s = = 3
        """,
    )
    assert msg.startswith(str(tmp_path / "spec.toml"))
    assert "invalid TOML" in msg
    assert "line 3" in msg


def test_unreadable_spec_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "absent.toml")


def test_missing_workload_file_names_key_line_and_resolved_path(tmp_path: Path) -> None:
    msg = spec_error(
        tmp_path,
        """
        [workload]
        kind = "file"
        path = "prompts/none.jsonl"
        """,
    )
    assert "spec.toml:3: [workload] path: file not found" in msg
    assert str(tmp_path / "prompts" / "none.jsonl") in msg


def test_file_workload_without_path_is_rejected(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, '[workload]\nkind = "file"\n')
    assert "[workload] path" in msg
    assert "needs a path" in msg


def test_relative_workload_path_resolves_next_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"prompt": "hi"}\n')
    path = write_spec(tmp_path, '[workload]\nkind = "file"\npath = "data/p.jsonl"\n')
    spec = load_spec(path)
    assert spec.workload.path == str(tmp_path / "data" / "p.jsonl")
    assert spec.workload.kind == "file"


def test_config_ids_are_exact_so_close_delays_stay_apart() -> None:
    from loadgen.spec import ServerConfig

    def cid(delay: float) -> str:
        return ServerConfig(1, 8, delay, 1, 1, "int8").config_id

    assert cid(5.0) == "r1-b8-d5-w1-t1-int8-adaptive"
    assert cid(2.5) == "r1-b8-d2.5-w1-t1-int8-adaptive"
    assert cid(0.1234567) != cid(0.1234568)


# ------------------------------------------------------------------------------ closed-loop timing


def test_closed_loop_ramp_defaults_to_auto_and_no_think_time() -> None:
    load = parse_spec("").load
    assert load.ramp_s is None  # RAMP_AUTO: one probed request's duration
    assert load.think_time_s is None


@pytest.mark.parametrize(("value", "ramp"), [('"auto"', None), ("0", 0.0), ("1.5", 1.5)])
def test_ramp_parses(value: str, ramp: float | None) -> None:
    assert parse_spec(f"[load]\nramp_s = {value}\n").load.ramp_s == ramp


def test_think_time_is_a_length_style_distribution_in_seconds() -> None:
    spec = parse_spec(
        textwrap.dedent(
            """
            [load]
            think_time_s = { dist = "uniform", min = 0.0, max = 0.05 }
            """
        )
    )
    assert spec.load.think_time_s == LengthDist(dist="uniform", min=0.0, max=0.05)
    fixed = parse_spec("[load]\nthink_time_s = 0.25\n").load.think_time_s
    assert fixed == LengthDist(dist="fixed", value=0.25, min=0.25, max=0.25)
    normal = parse_spec(
        '[load]\nthink_time_s = { dist = "normal", mean = 0.1, std = 0.02, min = 0, max = 1 }\n'
    ).load.think_time_s
    assert normal == LengthDist(dist="normal", mean=0.1, std=0.02, min=0.0, max=1.0)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[load]\nramp_s = -1\n", "[load] ramp_s", "must be >= 0"),
        ('[load]\nramp_s = "soon"\n', "[load] ramp_s", '"auto"'),
        ("[load]\nramp_s = true\n", "[load] ramp_s", "bool"),
        ("[load]\nthink_time_s = -0.1\n", "[load] think_time_s", "value >= 0"),
        ('[load]\nthink_time_s = "1"\n', "[load] think_time_s", "expected a table"),
        (
            '[load]\nthink_time_s = { dist = "uniform", min = 0.2, max = 0.1 }\n',
            "[load] think_time_s",
            "0 <= min <= max",
        ),
        (
            '[load]\nthink_time_s = { dist = "fixed", value = 0.1, max = 1 }\n',
            "[load] think_time_s",
            "unknown field",
        ),
    ],
)
def test_bad_ramp_or_think_time_names_key_and_line(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    msg = spec_error(tmp_path, text)
    assert "spec.toml:2: " in msg
    assert key in msg
    assert fragment in msg


def test_token_lengths_stay_whole_numbers(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, '[workload]\ninput_tokens = { dist = "fixed", value = 2.5 }\n')
    assert "spec.toml:2: [workload] input_tokens: value must be a whole number" in msg
    # A number for a token length must be an integer (a float is no shorthand for tokens).
    msg = spec_error(tmp_path, "[workload]\ninput_tokens = 5.0\n")
    assert "spec.toml:2: [workload] input_tokens: expected a table" in msg


# ------------------------------------------------------------------------------ inert keys

_SLO = "[slo]\nttft_p95_s = 1\n"


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        # Closed-loop keys the open-loop modes never use.
        ('[load]\nmode = "rate"\nthink_time_s = 0.5\n', 3, "[load] think_time_s", "closed-loop"),
        ('[load]\nmode = "rate"\nramp_s = 2\n', 3, "[load] ramp_s", 'mode = "rate" ignores'),
        (f'[load]\nmode = "slo_search"\nramp_s = 1\n{_SLO}', 3, "[load] ramp_s", "closed-loop"),
        ('[load]\nmode = "auto"\nthink_time_s = 0.1\n', 3, "[load] think_time_s", "auto"),
        (
            "[load]\nthink_time_s = 0.1\nstages = [{duration_s = 5, rate = 2}]\n",
            2,
            "[load] think_time_s",
            "with rate stages",
        ),
        # Burstiness shapes gamma arrivals only; gamma shapes open-loop arrivals only.
        ('[load]\nmode = "rate"\nburstiness = 0.5\n', 3, "[load] burstiness", '"gamma"'),
        ('[load]\nmode = "concurrency"\narrival = "gamma"\n', 3, "[load] arrival", "open-loop"),
        (
            '[load]\narrival = "gamma"\nstages = [{duration_s = 5, concurrency = 2}]\n',
            2,
            "[load] arrival",
            "with concurrency stages",
        ),
        # Search keys outside slo_search, and a lone search_min_rate above the default maximum.
        ('[load]\nmode = "rate"\nsearch_max_points = 9\n', 3, "[load] search_max_points", "slo"),
        ("[load]\n\nsearch_min_rate = 100\n", 3, "[load] search_min_rate", "slo_search"),
        (
            f'[load]\nmode = "slo_search"\nsearch_min_rate = 100\n{_SLO}',
            3,
            "[load] search_min_rate",
            "must be below search_max_rate (64",
        ),
        # What slo_search cannot honour.
        (f'[run]\nrepeats = 3\n[load]\nmode = "slo_search"\n{_SLO}', 2, "[run] repeats", "once"),
        ('[load]\nmode = "slo_search"\n[slo]\nmax_error_rate = 0.1\n', 2, "[load] mode", "latency"),
        # What distributed mode cannot do: fail before any replica starts.
        (
            "[load]\nworkers = 2\nstages = [{duration_s = 5, concurrency = 2}]\n",
            2,
            "[load] workers",
            "one process",
        ),
        (
            '[run]\nsaturation_s = 5\n[load]\nmode = "rate"\nworkers = 2\n',
            2,
            "[run] saturation_s",
            "not watched",
        ),
    ],
)
def test_keys_a_mode_would_drop_are_errors_naming_key_and_line(
    tmp_path: Path, text: str, line: int, key: str, fragment: str
) -> None:
    msg = spec_error(tmp_path, text)
    assert f"spec.toml:{line}: {key}: " in msg
    assert fragment in msg


@pytest.mark.parametrize(
    "text",
    [
        # Defaults restated (as the reference does) are no error in any mode.
        '[load]\nmode = "rate"\nramp_s = "auto"\nburstiness = 1.0\nsearch_min_rate = 1.0\n',
        '[load]\nmode = "concurrency"\narrival = "constant"\nthink_time_s = 0.1\n',
        '[load]\nmode = "auto"\nramp_s = 0\n',
        '[load]\nmode = "rate"\narrival = "gamma"\nburstiness = 0.5\nworkers = 2\n',
        # saturation_s at its default with workers: the runner logs a notice instead.
        '[load]\nmode = "rate"\nworkers = 2\n',
        '[run]\nsaturation_s = 0\n[load]\nmode = "rate"\nworkers = 2\n',
        "[load]\nworkers = 2\nstages = [{duration_s = 5, rate = 2}]\n",
    ],
)
def test_keys_that_apply_or_sit_at_their_default_parse(text: str) -> None:
    parse_spec(text)


def test_array_of_tables_stages_errors_name_the_stage_line(tmp_path: Path) -> None:
    text = """
        [load]
        mode = "stages"

        [[load.stages]]
        duration_s = 5
        rate = 1

        [[load.stages]]
        duration_s = 5
        rate = -1
        """
    msg = spec_error(tmp_path, text)
    assert "spec.toml:8: [load] stages: stage 1: rate must be" in msg
    msg = spec_error(tmp_path, text.replace("rate = 1\n", "rate = 1\nconcurrency = 2\n", 1))
    assert "spec.toml:4: [load] stages: stage 0: give a rate" in msg


def test_sessions_open_loop_levels_offer_requests_per_second() -> None:
    spec = parse_spec(
        '[load]\nmode = "rate"\nrate = [2]\n'
        '[workload]\nkind = "sessions"\nturns = { dist = "uniform", min = 2, max = 6 }\n'
    )
    (level,) = spec.levels()
    assert level.key == "rate=2/poisson"  # the spec's unit, sessions/s, keys the point
    assert (level.sessions_per_s, level.requests_per_s) == (2.0, 8.0)
    closed = parse_spec('[workload]\nkind = "sessions"\n').levels()[0]
    assert closed.turns_per_arrival is None and math.isnan(closed.requests_per_s)
    plain = parse_spec('[load]\nmode = "rate"\nrate = [3]\n').levels()[0]
    assert plain.requests_per_s == 3.0 and math.isnan(plain.sessions_per_s)
    stages = parse_spec(
        '[load]\nstages = [{duration_s = 5, rate = 1}]\n[workload]\nkind = "sessions"\nturns = 3\n'
    ).levels()
    assert stages[0].requests_per_s == 3.0


def test_batch_policy_is_a_server_dimension_named_in_the_config_id() -> None:
    spec = parse_spec(
        textwrap.dedent(
            """
            [server]
            batch_policy = ["triton", "adaptive"]
            configs = [{ batch_policy = "adaptive", batch_workers = 2 }, { batch_workers = 3 }]
            """
        )
    )
    a, b = spec.configs()
    assert a.batch_policy == "adaptive" and a.config_id.endswith("-int8-adaptive")
    # The default policy adds nothing to the id: runs from before policies keep their ids.
    assert b.batch_policy == "triton" and b.config_id == "r1-b8-d5-w3-t1-int8"


@pytest.mark.parametrize(
    "text",
    ['[server]\nbatch_policy = ["fifo"]', '[server]\nconfigs = [{ batch_policy = "fifo" }]'],
)
def test_unknown_batch_policy_is_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError, match="batch_policy"):
        parse_spec(text)


def test_spare_workers_is_a_server_dimension_named_in_the_config_id() -> None:
    spec = parse_spec(
        textwrap.dedent(
            """
            [server]
            configs = [
              { batch_workers = 2, spare_workers = 1 },
              { batch_workers = 2, spare_workers = 0 },
            ]
            """
        )
    )
    a, b = spec.configs()
    assert a.spare_workers == 1 and a.config_id == "r1-b8-d5-w2-s1-t1-int8-adaptive"
    # None adds nothing to the id: runs from before spares keep their ids.
    assert b.spare_workers == 0 and b.config_id == "r1-b8-d5-w2-t1-int8-adaptive"
    crossed = parse_spec("[server]\nspare_workers = [0, 1]").configs()
    assert [c.spare_workers for c in crossed] == [0, 1]


def test_negative_spare_workers_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="spare_workers"):
        parse_spec("[server]\nspare_workers = [-1]")
    with pytest.raises(SpecError, match="spare_workers"):
        parse_spec("[server]\nconfigs = [{ spare_workers = -1 }]")
