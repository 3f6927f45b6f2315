"""Run directory: the declared schema survives a write/read round trip; points replace by id."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadgen.results import (
    ENVIRONMENT_FILE,
    ENVIRONMENT_KEYS,
    POINT_COLUMNS,
    POINTS_FILE,
    REQUEST_COLUMNS,
    REQUESTS_DIR,
    SERVER_COLUMNS,
    SERVER_DIR,
    SPEC_FILE,
    STATE_FILE,
    Col,
    Point,
    RunDir,
    Srv,
)

ARROW_TYPES = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "list<float64>": pa.list_(pa.float64()),
}


def request_row(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        Col.POINT_ID: 3,
        Col.REQUEST_ID: f"lg-{i:04x}",
        Col.TRACE_ID: f"{i:032x}",
        Col.TARGET: "http://127.0.0.1:9",
        Col.USER: i % 2,
        Col.SCHEDULED_AT: math.nan,
        Col.SENT_AT: 1_700_000_000.0 + i,
        Col.FIRST_TOKEN_AT: 1_700_000_000.05 + i,
        Col.FINISHED_AT: 1_700_000_000.2 + i,
        Col.SCHEDULE_LAG_S: 0.0,
        Col.TTFT_S: 0.05,
        Col.TTFT_FROM_SCHEDULE_S: 0.05,
        Col.E2E_S: 0.2,
        Col.E2E_FROM_SCHEDULE_S: 0.2,
        Col.TPOT_S: 0.01,
        Col.ITL_S: [0.01 * (k + 1) for k in range(i)],
        Col.PROMPT_TOKENS: 16,
        Col.COMPLETION_TOKENS: 8,
        Col.STREAMED_CHUNKS: 8,
        Col.USAGE_MISMATCH: False,
        Col.STATUS: 200,
        Col.OK: True,
        Col.ERROR: "",
        Col.FINISH_REASON: "length",
    }
    row.update(overrides)
    return row


def test_column_constants_are_unique_and_complete() -> None:
    assert len(set(POINT_COLUMNS)) == len(POINT_COLUMNS)
    assert len(set(SERVER_COLUMNS)) == len(SERVER_COLUMNS)
    request_consts = {v for k, v in vars(Col).items() if k.isupper()}
    assert request_consts == set(REQUEST_COLUMNS)
    assert set(REQUEST_COLUMNS.values()) <= set(ARROW_TYPES)
    assert Point.SERVER_TTFT_MEAN_S in POINT_COLUMNS
    assert POINT_COLUMNS[0] == Point.POINT_ID


def test_create_is_idempotent_and_lays_out_the_tree(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    RunDir(tmp_path / "run").create()
    assert (run.path / REQUESTS_DIR).is_dir()
    assert (run.path / SERVER_DIR).is_dir()
    assert run.points().columns.tolist() == list(POINT_COLUMNS)
    assert run.points().empty
    assert run.requests().columns.tolist() == list(REQUEST_COLUMNS)
    assert run.server().columns.tolist() == list(SERVER_COLUMNS)
    assert run.state() == {}
    assert run.environment() == {}


def test_requests_round_trip_with_the_declared_schema(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    rows = [request_row(i) for i in range(4)]
    rows.append(
        request_row(
            9,
            **{
                Col.OK: False,
                Col.STATUS: 0,
                Col.ERROR: "ConnectionError: refused",
                Col.TTFT_S: math.nan,
                Col.ITL_S: [],
                Col.SCHEDULED_AT: 1_700_000_009.0,
                Col.SCHEDULE_LAG_S: 0.003,
            },
        )
    )
    partial = {Col.REQUEST_ID: "lg-partial", Col.POINT_ID: 3}  # missing columns become nulls
    path = run.write_requests(3, [*rows, partial])
    assert path == tmp_path / REQUESTS_DIR / "0003.parquet"
    assert not list((tmp_path / REQUESTS_DIR).glob("*.tmp"))

    schema = pq.read_schema(path)
    assert schema.names == list(REQUEST_COLUMNS)
    for name, dtype in REQUEST_COLUMNS.items():
        assert schema.field(name).type == ARROW_TYPES[dtype], name

    frame = run.requests()
    assert len(frame) == 6
    assert frame[Col.REQUEST_ID].tolist()[:5] == [r[Col.REQUEST_ID] for r in rows]
    assert [list(x) for x in frame[Col.ITL_S][:5]] == [r[Col.ITL_S] for r in rows]
    assert frame[Col.ITL_S][3].tolist() == pytest.approx([0.01, 0.02, 0.03])
    assert frame[Col.OK].tolist()[:5] == [True] * 4 + [False]
    assert frame[Col.ERROR][4] == "ConnectionError: refused"
    assert math.isnan(frame[Col.TTFT_S][4])
    assert math.isnan(frame[Col.SCHEDULED_AT][0])
    assert frame[Col.SCHEDULED_AT][4] == 1_700_000_009.0
    assert frame[Col.SENT_AT][2] == 1_700_000_002.0  # epoch seconds keep full precision
    assert frame[Col.REQUEST_ID][5] == "lg-partial"
    assert frame[Col.TRACE_ID].isna()[5]


def test_empty_request_file_keeps_the_schema(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    path = run.write_requests(0, [])
    assert pq.read_schema(path).names == list(REQUEST_COLUMNS)
    assert pq.read_table(path).num_rows == 0


def test_requests_concatenate_across_points(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    run.write_requests(1, [request_row(1, **{Col.POINT_ID: 1})])
    run.write_requests(0, [request_row(0, **{Col.POINT_ID: 0}), request_row(2)])
    frame = run.requests()
    assert frame[Col.POINT_ID].tolist() == [0, 3, 1]  # files in point order


def summary(pid: int, **extra: Any) -> dict[str, Any]:
    return {
        Point.POINT_ID: pid,
        Point.CONFIG_ID: "r1-b8-d5-w1-t1-int8",
        Point.REPEAT: 0,
        Point.LOAD_MODE: "concurrency",
        Point.ARRIVAL: "closed",
        Point.LOAD_LEVEL: float(pid + 1),
        Point.STATUS: "ok",
        Point.STATUS_DETAIL: "",
        Point.N_OK: 10 * (pid + 1),
        Point.TTFT_P50_S: 0.05,
        Point.VALID: True,
        Point.INVALID_REASON: "",
        **extra,
    }


def test_append_point_adds_rows_in_id_order_and_replaces_by_id(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    run.append_point(summary(1))
    run.append_point(summary(0))
    run.append_point(summary(2, **{Point.STATUS: "replica_died", Point.VALID: False}))
    frame = run.points()
    assert frame.columns.tolist() == list(POINT_COLUMNS)
    assert frame[Point.POINT_ID].tolist() == [0, 1, 2]
    assert frame[Point.N_OK].tolist() == [10, 20, 30]
    assert frame[Point.STATUS].tolist() == ["ok", "ok", "replica_died"]
    assert frame[Point.STATUS_DETAIL].tolist() == ["", "", ""]
    assert math.isnan(frame[Point.OFFERED_RPS][0])  # absent summary fields are NaN

    run.append_point(
        summary(
            1,
            **{
                Point.N_OK: 99,
                Point.STATUS: "replica_died",
                Point.STATUS_DETAIL: "replica http://x exited with code -9",
                Point.VALID: False,
                Point.INVALID_REASON: "replica died",
            },
        )
    )
    frame = run.points()
    assert frame[Point.POINT_ID].tolist() == [0, 1, 2]
    assert frame[Point.N_OK].tolist() == [10, 99, 30]
    assert frame[Point.STATUS_DETAIL][1] == "replica http://x exited with code -9"
    assert frame[Point.VALID].tolist() == [True, False, False]
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / POINTS_FILE).read_text().splitlines()[0].split(",") == list(POINT_COLUMNS)


def test_server_rows_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    rows = [
        {
            Srv.POINT_ID: 0,
            Srv.REPLICA: "http://127.0.0.1:1",
            Srv.METRIC: "tokenbooth_batch_size_bucket",
            Srv.LE: "4.0",
            Srv.LABELS: "model=m;model_revision=r",
            Srv.BEFORE: 2.0,
            Srv.AFTER: 7.0,
            Srv.DELTA: 5.0,
        },
        {
            Srv.POINT_ID: 0,
            Srv.REPLICA: "http://127.0.0.1:1",
            Srv.METRIC: "tokenbooth_requests_waiting",
            Srv.LE: "",
            Srv.LABELS: "model=m;model_revision=r",
            Srv.BEFORE: 0.0,
            Srv.AFTER: 3.0,
            Srv.DELTA: math.nan,
        },
    ]
    path = run.write_server(0, rows)
    assert path == tmp_path / SERVER_DIR / "0000.parquet"
    frame = run.server()
    assert frame.columns.tolist() == list(SERVER_COLUMNS)
    assert frame[Srv.DELTA][0] == 5.0
    assert math.isnan(frame[Srv.DELTA][1])
    assert frame[Srv.LE].tolist() == ["4.0", ""]
    run.write_server(1, [])
    assert len(run.server()) == 2


def test_state_spec_and_environment_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    state = {
        "done": ["r1|concurrency=1/closed|0"],
        "point_ids": {"r1|concurrency=1/closed|0": 0, "r1|concurrency=4/closed|0": 1},
        "auto": {"r1": {"sync_rps": 1.5}},
    }
    run.write_state(state)
    assert run.state() == state
    assert (tmp_path / STATE_FILE).exists()
    run.write_state({"done": []})
    assert run.state() == {"done": []}

    spec = '[run]\nname = "x"  # comment kept\n'
    run.write_spec(spec)
    assert run.spec_text() == spec
    assert (tmp_path / SPEC_FILE).read_text() == spec

    env = dict.fromkeys(ENVIRONMENT_KEYS, None) | {"machine": {"cpu_count": 2}, "started_at": "t"}
    run.write_environment(env)
    assert run.environment() == env
    assert (tmp_path / ENVIRONMENT_FILE).exists()
    assert not list(tmp_path.glob("*.tmp"))
