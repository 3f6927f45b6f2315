"""``tokenbooth model eval``: the pure measures, score_batch perplexity, and the CLI's files."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.cli import main
from service.errors import ModelBuildError
from service.models import build as build_module
from service.models import load_model_files
from service.models.eval import (
    QUALITY_CSV,
    EvalData,
    agreement,
    answer_correct,
    default_quantizations,
    evaluate,
    first_divergence,
    load_eval_data,
    perplexity,
    score_windows,
)
from service.models.quality import QUALITY_FILE, read_quality
from service.settings import QUANTIZATIONS

TEXT = (
    "The quick brown fox jumps over the lazy dog. Names refer to objects, and names are "
    "introduced by name binding operations such as assignment and import statements."
)


def _generator(model_dir: Path) -> Any:
    import ctranslate2

    return ctranslate2.Generator(str(model_dir), device="cpu", compute_type="float32")


def _hand_log_probs(generator: Any, window: list[str], vocab: dict[str, int]) -> list[float]:
    """Log-probs of each token after the first, from forward_batch logits softmaxed here."""
    logits = np.asarray(generator.forward_batch([window]))[0].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    ids = [vocab[t] for t in window]
    return [float(log_softmax[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def test_score_batch_perplexity_matches_softmaxed_logits(tiny_dir: Path) -> None:
    files = load_model_files(tiny_dir)
    tokens = files.tokenizer.encode(TEXT).tokens
    vocab = files.tokenizer.get_vocab()
    generator = _generator(tiny_dir)
    windows = score_windows(tokens, 8)
    scored = generator.score_batch(windows, max_input_length=0)
    by_ctranslate2 = [list(r.log_probs) for r in scored]
    by_hand = [_hand_log_probs(generator, w, vocab) for w in windows]
    for ours, theirs in zip(by_ctranslate2, by_hand, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
    flat = [lp for w in by_hand for lp in w]
    ppl, count = perplexity(by_ctranslate2)
    assert count == len(tokens) - 1
    assert ppl == pytest.approx(math.exp(-sum(flat) / len(flat)), rel=1e-3)
    # A random model is near-uniform: its perplexity is of the order of the vocabulary size.
    assert len(vocab) / 10 < ppl < len(vocab) * 10


def test_score_windows_score_every_token_but_the_first_once() -> None:
    tokens = [f"t{i}" for i in range(23)]
    windows = score_windows(tokens, 5)
    assert all(len(w) <= 6 for w in windows)
    assert [t for w in windows for t in w[1:]] == tokens[1:]
    assert score_windows(["a"], 5) == []
    with pytest.raises(ValueError, match="window"):
        score_windows(tokens, 0)


def test_perplexity_of_known_log_probs() -> None:
    assert perplexity([[math.log(0.5)] * 3, [math.log(0.5)]]) == (pytest.approx(2.0), 4)
    assert perplexity([[math.log(0.25), math.log(1.0)]])[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no scored"):
        perplexity([[], []])


def test_first_divergence_on_constructed_sequences() -> None:
    assert first_divergence([1, 2, 3, 4], [1, 2, 3, 4], 4) == 4
    assert first_divergence([1, 2, 3, 4], [1, 2, 9, 4], 4) == 2
    assert first_divergence([5, 2], [1, 2], 4) == 0
    # Only the first n tokens count.
    assert first_divergence([1, 2, 3, 4], [1, 2, 7, 8], 2) == 2
    # One stopped early (end token) while the other went on: they part where it stopped.
    assert first_divergence([1, 2], [1, 2, 3], 4) == 2
    assert first_divergence([1, 2], [1, 2], 4) == 4


def test_agreement_counts_exact_matches_and_mean_divergence() -> None:
    reference = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]]
    candidate = [[1, 2, 3], [4, 0, 6], [0, 8, 9], [1, 1, 1]]
    share, divergence = agreement(reference, candidate, 3)
    assert share == 0.5
    assert divergence == (3 + 1 + 0 + 3) / 4
    assert agreement(reference, reference, 3) == (1.0, 3.0)
    with pytest.raises(ValueError, match="same"):
        agreement(reference, candidate[:2], 3)


def test_answer_correct_matches_whole_words_ignoring_case() -> None:
    assert answer_correct("The capital of France is PARIS.", ["Paris"])
    assert answer_correct("2 + 2 = 4", ["4", "four"])
    assert answer_correct("It is four.", ["4", "four"])
    assert not answer_correct("The answer is 14.", ["4", "four"])
    assert not answer_correct("I don't know.", ["Paris"])
    assert answer_correct("Water is H2O.", ["H2O"])
    assert answer_correct("Plants absorb carbon dioxide.", ["carbon dioxide", "CO2"])
    assert not answer_correct("", ["Paris"])


def test_shipped_sample_is_complete() -> None:
    data = load_eval_data()
    assert "Python Software Foundation" in data.text_source
    assert not any(line.startswith("# ") for line in data.text.splitlines())
    assert len(data.text) > 10_000
    assert len(data.prompts) >= 40
    assert all(m["role"] and m["content"] for p in data.prompts for m in p)
    assert 30 <= len(data.tasks) <= 50
    assert all(task.question and task.answers for task in data.tasks)


def test_default_quantizations_are_built_and_supported_here() -> None:
    import ctranslate2

    found = default_quantizations("cpu")
    assert {"float32", "int8"} <= set(found) <= set(QUANTIZATIONS)
    assert set(found) <= ctranslate2.get_supported_compute_types("cpu")


def _small_data() -> EvalData:
    full = load_eval_data()
    return EvalData(
        text=full.text[:600], text_source="a slice", prompts=full.prompts[:3], tasks=full.tasks[:2]
    )


def test_eval_reuses_the_build_cache(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = build_module.convert_gguf

    def spy(source: Path, output_dir: Path, quantization: str, **options: Any) -> Any:
        calls.append(quantization)
        return real(source, output_dir, quantization, **options)

    monkeypatch.setattr(build_module, "convert_gguf", spy)
    kwargs: dict[str, Any] = {"models_dir": tmp_path, "data": _small_data(), "device": "cpu"}
    first = evaluate(tiny_gguf, ["int8"], agreement_tokens=3, **kwargs)
    assert sorted(calls) == ["float32", "int8"]
    second = evaluate(tiny_gguf, ["int8", "float32"], agreement_tokens=3, **kwargs)
    assert sorted(calls) == ["float32", "int8"]  # nothing rebuilt
    assert [v.quantization for v in second.variants] == ["float32", "int8"]
    assert second.variants[0].perplexity == pytest.approx(first.variants[0].perplexity)


def test_eval_rejects_a_ctranslate2_source(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match="CTranslate2 model"):
        evaluate(tiny_dir, ["int8"], models_dir=tmp_path, data=_small_data(), device="cpu")


def test_cli_writes_a_quality_report_read_quality_reads(
    tmp_path: Path, tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["model", "eval", "--model", str(tiny_gguf), "--quantizations", "int8"]
    argv += ["--output", str(out), "--models-dir", str(tmp_path / "models")]
    assert main([*argv, "--agreement-tokens", "4", "--device", "cpu"]) == 0
    report = read_quality(out / QUALITY_FILE)
    assert report.model == "tiny-llama"
    assert report.device == "cpu"
    assert report.sample.agreement_tokens == 4
    assert report.sample.agreement_prompts == len(load_eval_data().prompts)
    assert report.sample.perplexity_tokens > 2000
    reference, int8 = report.variants
    assert (reference.quantization, int8.quantization) == ("float32", "int8")
    assert reference.perplexity_increase == 0.0
    assert (reference.greedy_agreement, reference.mean_first_divergence) == (1.0, 4.0)
    assert 0.0 <= int8.greedy_agreement <= 1.0
    assert 0.0 <= int8.mean_first_divergence <= 4.0
    assert int8.size_bytes < reference.size_bytes
    assert int8.compute_type.startswith("int8")  # CTranslate2 names CPU int8 int8_float32
    assert all(v.load_s > 0 and v.rss_bytes >= 0 and v.perplexity > 1 for v in report.variants)
    with (out / QUALITY_CSV).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["quantization"] for r in rows] == ["float32", "int8"]
    assert float(rows[1]["perplexity"]) == pytest.approx(int8.perplexity)
    printed = capsys.readouterr().out
    assert "quantization" in printed
    assert str(out / QUALITY_FILE) in printed


def test_cli_rejects_unknown_quantizations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["model", "eval", "--quantizations", "int8,int4"])
    assert "int4" in capsys.readouterr().err
