"""Trace replay: Mooncake and BurstGPT readers, time scale, replay window, shared-prefix prompts."""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from tokenizers import Tokenizer

import loadgen
from loadgen.spec import RunSpec, SpecError, WorkloadSpec, load_spec, parse_spec
from loadgen.traces import (
    BLOCK_TOKENS,
    TraceError,
    TraceRequest,
    plan_replay,
    read_burstgpt,
    read_mooncake,
    read_trace,
    trace_prompts,
)
from loadgen.workload import (
    TokenCounter,
    WordCounter,
    WorkloadError,
    build_workload,
    load_tokenizer,
)
from scripts.make_traces import (
    BURSTGPT_FILE,
    MOONCAKE_FILE,
    burstgpt_rows,
    main,
    mooncake_rows,
    write_mooncake,
)
from tests.support.tiny_model import build_tiny_model

DATA = Path(loadgen.__file__).parent / "data"
EXAMPLES = Path(loadgen.__file__).parent / "examples"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with SmolLM2's real tokenizer.json (the built-in model's)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def hf_counter(tokenizer_dir: Path) -> TokenCounter:
    """The built-in model's tokenizer, as the workload uses it."""
    counter = load_tokenizer(tokenizer_dir)
    assert not isinstance(counter, WordCounter)
    return counter


def jsonl(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------ Mooncake


def test_mooncake_reader_gives_offsets_in_seconds_sorted_by_time(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "t.jsonl",
        '{"timestamp": 1500, "input_length": 700, "output_length": 9, "hash_ids": [1, 2]}',
        "",
        '{"timestamp": 1000, "input_length": 300, "output_length": 5, "hash_ids": [1]}',
        '{"timestamp": 4000, "input_length": 20, "output_length": 3}',
    )
    reqs = read_mooncake(path)
    assert reqs == [
        TraceRequest(0.0, 300, 5, (1,)),
        TraceRequest(0.5, 700, 9, (1, 2)),
        TraceRequest(3.0, 20, 3, ()),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected an object"),
        ('{"timestamp": 5, "input_length": 3}', "missing output_length"),
        ('{"timestamp": -1, "input_length": 3, "output_length": 2}', "timestamp must be ms >= 0"),
        ('{"timestamp": "5", "input_length": 3, "output_length": 2}', "timestamp must be ms >= 0"),
        ('{"timestamp": 5, "input_length": 0, "output_length": 2}', "input_length must be"),
        ('{"timestamp": 5, "input_length": 2.5, "output_length": 2}', "input_length must be"),
        ('{"timestamp": 5, "input_length": 3, "output_length": true}', "output_length must be"),
        (
            '{"timestamp": 5, "input_length": 3, "output_length": 2, "hash_ids": [1, -2]}',
            "hash_ids must be a list of integers >= 0",
        ),
    ],
)
def test_mooncake_bad_line_names_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = '{"timestamp": 0, "input_length": 3, "output_length": 2, "hash_ids": [0]}'
    path = jsonl(tmp_path / "bad.jsonl", good, good, line)
    with pytest.raises(TraceError) as exc:
        read_mooncake(path)
    assert str(exc.value).startswith(f"{path}:3: ")
    assert message in str(exc.value)


def test_empty_or_missing_trace_is_an_error(tmp_path: Path) -> None:
    empty = jsonl(tmp_path / "empty.jsonl", "", "")
    with pytest.raises(TraceError, match="no requests"):
        read_trace(empty, "mooncake")
    with pytest.raises(TraceError, match="trace file not found"):
        read_trace(tmp_path / "nope.csv", "burstgpt")
    with pytest.raises(TraceError, match="unknown trace format"):
        read_trace(empty, "sharegpt")


# ------------------------------------------------------------------------------ BurstGPT

BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def test_burstgpt_reader_skips_failed_requests_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        textwrap.dedent(
            f"""\
            {BURST_HEADER}
            5,ChatGPT,120,30,150,Conversation log
            6.5,GPT-4,80,0,80,API log
            9,ChatGPT,7,12,19,Conversation log
            """
        )
    )
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        reqs = read_burstgpt(path)
    assert reqs == [TraceRequest(0.0, 120, 30), TraceRequest(4.0, 7, 12)]
    assert "skipped 1 row(s) with 0 request or response tokens" in caplog.text


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("x,ChatGPT,1,2,3,API log", "Timestamp must be seconds >= 0"),
        ("-3,ChatGPT,1,2,3,API log", "Timestamp must be seconds >= 0"),
        ("3,ChatGPT,1.5,2,3,API log", "Request tokens must be an integer >= 0"),
        ("3,ChatGPT,4,,3,API log", "Response tokens must be an integer >= 0"),
        ("3,ChatGPT,4", "expected 6 fields"),
    ],
)
def test_burstgpt_bad_row_names_the_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "b.csv"
    path.write_text(f"{BURST_HEADER}\n1,ChatGPT,10,10,20,API log\n{row}\n")
    with pytest.raises(TraceError) as exc:
        read_burstgpt(path)
    assert str(exc.value).startswith(f"{path}:3: ")
    assert message in str(exc.value)


def test_burstgpt_header_must_name_the_columns_read(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("time,Model,Request tokens,Response tokens\n1,ChatGPT,10,10\n")
    with pytest.raises(TraceError, match=r":1: BurstGPT header lacks \['Timestamp'\]"):
        read_burstgpt(path)


# ------------------------------------------------------------------------------ shipped data


def test_shipped_traces_are_the_generators_output(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    for name in (MOONCAKE_FILE, BURSTGPT_FILE):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_shipped_traces_hold_200_requests_over_a_minute_with_shared_prefixes() -> None:
    moon = read_trace(DATA / MOONCAKE_FILE, "mooncake")
    burst = read_trace(DATA / BURSTGPT_FILE, "burstgpt")
    assert len(moon) == 200
    assert len(burst) == 200 - 4  # the generator's 4 failed requests are skipped
    for reqs in (moon, burst):
        assert 50 < reqs[-1].offset_s < 60
    firsts = [r.hash_ids[0] for r in moon]
    assert max(firsts.count(h) for h in set(firsts)) >= 20  # shared documents
    for r in moon:  # the published traces' block rule: the last block is partial
        assert (len(r.hash_ids) - 1) * BLOCK_TOKENS < r.input_tokens <= len(r.hash_ids) * 512


def test_generator_is_deterministic_in_its_seed() -> None:
    assert mooncake_rows(seed=3) == mooncake_rows(seed=3) != mooncake_rows(seed=4)
    assert burstgpt_rows(seed=3) == burstgpt_rows(seed=3) != burstgpt_rows(seed=4)


# ------------------------------------------------------------------------------ replay window

TRACE_WORKLOAD = WorkloadSpec(kind="trace", format="mooncake", path="t.jsonl")


def evenly(n: int, gap_s: float) -> list[TraceRequest]:
    return [TraceRequest(i * gap_s, 10, 4) for i in range(n)]


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 4.0])
def test_time_scale_divides_the_trace_offsets(scale: float) -> None:
    reqs = [TraceRequest(t, 10, 4) for t in (0.0, 0.3, 0.4, 2.0, 2.1)]
    replay = plan_replay(
        reqs,
        replace(TRACE_WORKLOAD, time_scale=scale),
        RunSpec(warmup_s=0.0, duration_s=100.0),
    )
    assert replay.offsets_s == pytest.approx([r.offset_s / scale for r in reqs])
    # 4 gaps over the span at the scale: time_scale = 2 offers twice the rate.
    assert replay.offered_rps == pytest.approx(4 / (2.1 / scale))
    assert replay.level().arrival == "trace"
    assert replay.level().mode == "rate"


def test_replay_stops_at_the_window_and_at_max_requests() -> None:
    reqs = evenly(100, 0.1)  # 10 req/s for 10 s
    run = RunSpec(warmup_s=1.0, duration_s=3.0, max_requests=1000)
    replay = plan_replay(reqs, TRACE_WORKLOAD, run)
    assert len(replay.requests) == 40  # offsets 0.0 .. 3.9 s
    assert replay.offered_rps == pytest.approx(10.0)  # measured: 1.0 .. 3.9 s, 30 sends
    capped = plan_replay(reqs, TRACE_WORKLOAD, replace(run, max_requests=5))
    # max_requests bounds the warm-up too: its last 5 sends (0.5 .. 0.9 s), then 5 measured.
    assert len(capped.requests) == 5 + 5
    assert capped.offsets_s[0] == pytest.approx(0.5)
    assert capped.offsets_s[-1] == pytest.approx(1.4)
    # Requests and offsets stay aligned (the runner's schedule_items index the requests).
    assert capped.offsets_s == pytest.approx([r.offset_s for r in capped.requests])
    assert capped.offered_rps == pytest.approx(10.0)


def test_a_window_with_under_two_sends_is_an_error() -> None:
    with pytest.raises(TraceError, match="needs at least 2"):
        plan_replay(evenly(5, 1.0), TRACE_WORKLOAD, RunSpec(warmup_s=4.0, duration_s=10.0))
    with pytest.raises(TraceError, match=r"time_scale 0\.1"):
        plan_replay(
            evenly(5, 1.0),
            replace(TRACE_WORKLOAD, time_scale=0.1),
            RunSpec(warmup_s=0.0, duration_s=5.0),
        )


# ------------------------------------------------------------------------------ prompts


def test_shared_hash_id_prefixes_share_exactly_their_tokens(
    hf_counter: TokenCounter, tokenizer_dir: Path
) -> None:
    reqs = [
        TraceRequest(0.0, 1500, 4, (1, 2, 3)),
        TraceRequest(0.1, 1400, 4, (1, 2, 7)),
        TraceRequest(0.2, 900, 4, (1, 9)),
        TraceRequest(0.3, 600, 4, (5, 6)),
    ]
    items = trace_prompts(reqs, hf_counter, seed=11)
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = [tok.encode(i.prompt or "", add_special_tokens=False).ids for i in items]
    assert [len(x) for x in ids] == [1500, 1400, 900, 600]
    assert [i.input_tokens for i in items] == [1500, 1400, 900, 600]
    assert [i.max_tokens for i in items] == [4, 4, 4, 4]

    def common(a: list[int], b: list[int]) -> int:
        return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))

    assert common(ids[0], ids[1]) == 2 * BLOCK_TOKENS
    assert common(ids[0], ids[2]) == BLOCK_TOKENS
    assert common(ids[2], ids[1]) == BLOCK_TOKENS
    assert common(ids[0], ids[3]) < 8  # different first block: at most a chance word or two
    assert (items[0].prompt or "")[:2000] == (items[1].prompt or "")[:2000]


def test_prompts_follow_the_seed_and_are_private_without_hash_ids() -> None:
    counter = WordCounter()
    reqs = [TraceRequest(0.0, 700, 4, (1,)), TraceRequest(0.1, 700, 4, (1,))]
    a = trace_prompts(reqs, counter, seed=1)
    b = trace_prompts(reqs, counter, seed=2)
    assert a == trace_prompts(reqs, counter, seed=1)
    assert a[0].prompt != b[0].prompt  # another point: another set of blocks
    assert [counter.count(i.prompt or "") for i in a] == [700, 700]
    # Block 1 shared, the filler beyond the hash ids private.
    words = [(i.prompt or "").split() for i in a]
    assert words[0][:BLOCK_TOKENS] == words[1][:BLOCK_TOKENS]
    assert words[0][BLOCK_TOKENS:] != words[1][BLOCK_TOKENS:]
    burst = trace_prompts([TraceRequest(0.0, 50, 4), TraceRequest(1.0, 50, 4)], counter, seed=1)
    assert (burst[0].prompt or "").split()[:10] != (burst[1].prompt or "").split()[:10]


def test_build_workload_refuses_a_trace() -> None:
    with pytest.raises(WorkloadError, match="trace_prompts"):
        build_workload(TRACE_WORKLOAD, WordCounter(), 4, seed=0)


# ------------------------------------------------------------------------------ spec


def trace_spec(tmp_path: Path, workload: str, load: str = "") -> tuple[str, str]:
    path = tmp_path / "spec.toml"
    write_mooncake(mooncake_rows(n=10, span_s=5.0), tmp_path / "t.jsonl")
    text = f'[run]\nduration_s = 5.0\n\n[load]\n{load}\n\n[workload]\nkind = "trace"\n{workload}\n'
    return text, str(path)


def test_spec_trace_defaults_to_mooncake_and_resolves_its_path(tmp_path: Path) -> None:
    text, path = trace_spec(tmp_path, 'path = "t.jsonl"\ntime_scale = 2')
    spec = parse_spec(text, path)
    assert spec.workload.format == "mooncake"
    assert spec.workload.time_scale == 2.0
    assert spec.workload.path == str(tmp_path / "t.jsonl")
    assert spec.levels() == []  # the runner makes the one replay level from the trace
    burst = parse_spec(text.replace("time_scale = 2", 'format = "burstgpt"'), path)
    assert burst.workload.format == "burstgpt"


@pytest.mark.parametrize(
    ("workload", "load", "message"),
    [
        ('path = "t.jsonl"', "rate = [2.0]", ":5: [load] rate: a trace workload replays"),
        ('path = "t.jsonl"', 'mode = "rate"', "[load] levels do not apply"),
        ('path = "t.jsonl"\ninput_tokens = 64', "", "[workload] input_tokens: a trace workload"),
        ('path = "t.jsonl"\nformat = "jsonl"', "", "a trace workload needs one of ['mooncake'"),
        ('path = "t.jsonl"\ntime_scale = 0', "", "[workload] time_scale: must be > 0"),
        ("", "", "[workload] path: a trace workload needs a path"),
        ('path = "gone.jsonl"', "", "file not found"),
    ],
)
def test_spec_trace_errors_name_the_key_and_line(
    tmp_path: Path, workload: str, load: str, message: str
) -> None:
    text, path = trace_spec(tmp_path, workload, load)
    with pytest.raises(SpecError) as exc:
        parse_spec(text, path)
    assert message in str(exc.value)
    assert str(exc.value).startswith(f"{path}:")


def test_spec_trace_keys_outside_a_trace_are_errors() -> None:
    with pytest.raises(SpecError, match=r'\[workload\] time_scale: only applies to kind = "trace"'):
        parse_spec("[workload]\ntime_scale = 2\n")
    with pytest.raises(SpecError, match="is a trace format"):
        parse_spec(
            '[workload]\nkind = "file"\npath = "x"\nformat = "mooncake"\n', check_files=False
        )


def test_spec_workers_may_be_set_and_a_report_needs_no_trace_file(tmp_path: Path) -> None:
    text, path = trace_spec(tmp_path, 'path = "elsewhere.jsonl"', "workers = 2")
    spec = parse_spec(text, path, check_files=False)
    assert spec.load.workers == 2
    assert json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])["hash_ids"]


def test_example_spec_replays_what_its_comments_say() -> None:
    spec = load_spec(EXAMPLES / "trace.toml")
    assert (spec.workload.kind, spec.workload.format) == ("trace", "mooncake")
    assert spec.target.engine == "ctranslate2"
    replay = plan_replay(read_trace(Path(spec.workload.path), "mooncake"), spec.workload, spec.run)
    measured = sum(o >= spec.run.warmup_s for o in replay.offsets_s)
    assert (len(replay.requests), measured) == (14, 11)
    assert replay.requests[-1].offset_s <= 7.2
    assert measured >= spec.run.min_samples
    assert replay.level().value == pytest.approx(0.2251)
