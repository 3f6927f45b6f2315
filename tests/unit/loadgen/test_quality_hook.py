"""The sweep's quality hook: when ``[report] quality`` runs ``tokenbooth model eval``, with what
arguments, once per run, and how every failure becomes a notice instead of a failed sweep."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from loadgen.quality import decide, eval_command, run_quality_eval
from loadgen.results import LOG_FILE, QUALITY_DIR, QUALITY_LOG_FILE, RunDir
from loadgen.spec import SpecError, SweepSpec, parse_spec
from service.models.quality import QUALITY_FILE, read_quality
from tests.support.sweeps import fake_target_toml, run_sweep, run_toml

# A stand-in for `tokenbooth`: records its argv, then writes a quality.json for the
# quantizations it was given (or exits with $FAKE_EVAL_RC).
FAKE_TOKENBOOTH = textwrap.dedent(
    """\
    import argparse, json, os, sys
    from pathlib import Path
    from service.models.quality import (
        EvalSample, QualityReport, VariantQuality, write_quality,
    )
    with open(os.environ["FAKE_EVAL_CALLS"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    rc = int(os.environ.get("FAKE_EVAL_RC", "0"))
    if rc:
        print("fake eval failed", file=sys.stderr)
        sys.exit(rc)
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["model"])
    p.add_argument("sub", choices=["eval"])
    p.add_argument("--model", required=True)
    p.add_argument("--quantizations", required=True)
    p.add_argument("--output", type=Path, required=True)
    a = p.parse_args()
    variants = tuple(
        VariantQuality(
            quantization=q, compute_type=q, perplexity=10.0 + i, perplexity_increase=i / 10,
            greedy_agreement=1 - i / 10, mean_first_divergence=32.0, task_accuracy=0.8,
            size_bytes=1, rss_bytes=1, load_s=0.1,
        )
        for i, q in enumerate(a.quantizations.split(","))
    )
    sample = EvalSample(
        perplexity_tokens=1, perplexity_source="x", agreement_prompts=1, agreement_tokens=32,
        tasks=1,
    )
    write_quality(
        QualityReport(model="m", source=a.model, device="cpu", sample=sample, variants=variants),
        a.output,
    )
    """
)


def spec(
    report: str = "", *, quantization: str = '["int8", "float32"]', target: str = ""
) -> SweepSpec:
    text = textwrap.dedent(
        f"""\
        [target]
        {target or 'model = "/models/smol.gguf"'}

        [server]
        quantization = {quantization}

        [report]
        {report}
        """
    )
    return parse_spec(text, "spec.toml")


@pytest.fixture
def fake_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """The fake eval's command prefix and the file its calls are recorded in."""
    script = tmp_path / "fake_tokenbooth.py"
    script.write_text(FAKE_TOKENBOOTH)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_EVAL_CALLS", str(calls))
    return [sys.executable, str(script)], calls


def calls_of(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------ spec


@pytest.mark.parametrize(
    ("report", "line", "needle"),
    [
        ('quality = "yes"', 8, "expected bool"),
        ("quality = 1", 8, "expected bool"),
        ("qualty = true", 8, "qualty"),
    ],
)
def test_bad_quality_key_names_key_and_line(report: str, line: int, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(report)
    assert f"spec.toml:{line}: [report]" in str(err.value)
    assert needle in str(err.value)


def test_quality_true_needs_a_local_target() -> None:
    remote = 'kind = "remote"\nurls = ["http://127.0.0.1:9"]'
    with pytest.raises(SpecError, match=r"spec\.toml:9: \[report\] quality: needs a local"):
        spec("quality = true", target=remote)
    assert spec("quality = false", target=remote).quality is False


def test_decision() -> None:
    assert decide(spec()).run  # absent: two quantizations on a local CTranslate2 target
    assert "2 quantizations" in decide(spec()).why
    assert not decide(spec(quantization='["int8"]')).run
    assert decide(spec(quantization='["int8"]')).why == ""  # nothing asked: no notice
    assert decide(spec("quality = true", quantization='["int8"]')).run
    assert decide(spec("quality = false")) == decide(spec("quality = false")).__class__(False, "")
    fake = spec(target='engine = "fake"')
    assert not decide(fake).run and "fake engine" in decide(fake).why
    assert decide(spec("quality = true", target='engine = "fake"')).run
    remote = spec(target='kind = "remote"\nurls = ["http://127.0.0.1:9"]')
    assert not decide(remote).run and "remote" in decide(remote).why


def test_eval_command_names_model_quantizations_and_output(tmp_path: Path) -> None:
    s = spec(quantization='["int8", "float16", "int8"]', report="quality = true")
    cmd = eval_command(s, tmp_path / QUALITY_DIR, ["tb"])
    assert cmd == [
        "tb",
        "model",
        "eval",
        "--model",
        "/models/smol.gguf",
        "--quantizations",
        "int8,float16",
        "--output",
        str(tmp_path / QUALITY_DIR),
    ]


# ------------------------------------------------------------------------------ the call


def test_eval_runs_once_and_records_quality_json(
    tmp_path: Path, fake_eval: tuple[list[str], Path]
) -> None:
    program, calls = fake_eval
    run = RunDir(tmp_path / "run").create()
    path = run_quality_eval(spec(), run, program=program)
    assert path == run.path / QUALITY_DIR / QUALITY_FILE
    report = read_quality(path)
    assert [v.quantization for v in report.variants] == ["int8", "float32"]
    assert report.source == "/models/smol.gguf"
    assert calls_of(calls) == [eval_command(spec(), run.path / QUALITY_DIR, [])]
    # A resumed run already holds it: no second evaluation.
    assert run_quality_eval(spec(), run, program=program) == path
    assert len(calls_of(calls)) == 1


def test_failed_eval_is_a_notice(
    tmp_path: Path,
    fake_eval: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    program, calls = fake_eval
    monkeypatch.setenv("FAKE_EVAL_RC", "3")
    run = RunDir(tmp_path / "run").create()
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        assert run_quality_eval(spec(), run, program=program) is None
    assert "notice: quality evaluation skipped" in caplog.text
    assert "exited with status 3" in caplog.text
    assert "fake eval failed" in (run.path / QUALITY_DIR / QUALITY_LOG_FILE).read_text()
    assert len(calls_of(calls)) == 1


def test_missing_command_and_empty_output_are_notices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = RunDir(tmp_path / "run").create()
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        assert run_quality_eval(spec(), run, program=[str(tmp_path / "no-such-tb")]) is None
        assert "could not start" in caplog.text
        caplog.clear()
        assert run_quality_eval(spec(), run, program=[sys.executable, "-c", "pass"]) is None
        assert f"wrote no readable {run.path / QUALITY_DIR / QUALITY_FILE}" in caplog.text


def test_not_asked_runs_nothing(
    tmp_path: Path, fake_eval: tuple[list[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    program, calls = fake_eval
    run = RunDir(tmp_path / "run").create()
    with caplog.at_level(logging.INFO, logger="tokenbooth.loadgen"):
        assert run_quality_eval(spec(quantization='["int8"]'), run, program=program) is None
        assert run_quality_eval(spec("quality = false"), run, program=program) is None
    assert caplog.text == ""
    remote = spec(target='kind = "remote"\nurls = ["http://127.0.0.1:9"]')
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        assert run_quality_eval(remote, run, program=program) is None
    assert "notice: quality evaluation skipped: the target is remote" in caplog.text
    assert calls_of(calls) == []
    assert not (run.path / QUALITY_DIR).exists()


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_calls_the_eval_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real (fake-engine) sweep with ``[report] quality = true`` calls `tokenbooth` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tokenbooth"
    script.write_text(f"#!{sys.executable}\n" + FAKE_TOKENBOOTH)
    script.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_EVAL_CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    text = (
        run_toml(name="quality", duration_s=2.0, warmup_s=0.5, max_requests=40, min_samples=1)
        + fake_target_toml(ttft_ms=10, itl_ms=2)
        + '[load]\nmode = "concurrency"\nconcurrency = [1]\n\n'
        + "[workload]\noutput_tokens = 4\n\n[report]\nquality = true\n"
    )
    run = run_sweep(tmp_path, "quality", text, timeout_s=120)
    (argv,) = calls_of(calls)
    assert argv[:2] == ["model", "eval"]
    assert argv[argv.index("--quantizations") + 1] == "int8"
    assert argv[argv.index("--output") + 1] == str(run.path / QUALITY_DIR)
    assert read_quality(run.path / QUALITY_DIR).variants[0].quantization == "int8"
    assert "quality: recorded" in (run.path / LOG_FILE).read_text()
