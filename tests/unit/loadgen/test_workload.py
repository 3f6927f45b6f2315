"""Workloads: exact synthetic prompt lengths in model tokens, seeded distributions, prompt files,
tokenizers named by path, and the OpenAI request bodies the harness sends.

The server's own tokenize endpoint is tested in ``test_tokenize.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest

import loadgen
from loadgen.results import Tokenizer
from loadgen.spec import LengthDist, WorkloadSpec
from loadgen.workload import (
    PromptItem,
    TokenCounter,
    WordCounter,
    WorkloadError,
    build_workload,
    choose_tokenizer,
    load_tokenizer,
    load_tokenizer_file,
    sample_lengths,
)
from service.schemas import ChatCompletionRequest, CompletionRequest
from tests.support.tiny_model import build_tiny_model

DATA = Path(loadgen.__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model directory with SmolLM2's real tokenizer.json."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def hf_counter(tiny_model_dir: Path) -> TokenCounter:
    """The tiny model's tokenizer as a TokenCounter."""
    counter = load_tokenizer(tiny_model_dir)
    assert not isinstance(counter, WordCounter)
    return counter


EIGHT_TOKENS = LengthDist(value=8)


def synthetic(inp: LengthDist, out: LengthDist = EIGHT_TOKENS) -> WorkloadSpec:
    return WorkloadSpec(kind="synthetic", input_tokens=inp, output_tokens=out)


# ------------------------------------------------------------------------------ token counts


def test_real_tokenizer_counts_model_tokens_not_words(hf_counter: TokenCounter) -> None:
    text = "Tokenization isn't whitespace-splitting: antidisestablishmentarianism!"
    assert WordCounter().count(text) == 4
    assert hf_counter.count(text) > 8
    head = hf_counter.truncate(text, 3)
    assert text.startswith(head)
    assert 0 < len(head) < len(text)
    assert hf_counter.count(head) == 3
    assert hf_counter.truncate(text, 10_000) == text
    assert hf_counter.truncate(text, 0) == ""


@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
def test_fixed_synthetic_prompts_have_exact_token_counts(hf_counter: TokenCounter, n: int) -> None:
    items = build_workload(synthetic(LengthDist(value=n)), hf_counter, 12, seed=3)
    assert [hf_counter.count(it.prompt or "") for it in items] == [n] * 12
    assert all(it.input_tokens == n for it in items)


def test_varied_synthetic_prompts_match_their_sampled_lengths(hf_counter: TokenCounter) -> None:
    spec = synthetic(
        LengthDist(dist="uniform", min=1, max=400),
        LengthDist(dist="normal", mean=50, std=30, min=4, max=90),
    )
    items = build_workload(spec, hf_counter, 120, seed=9)
    counts = [hf_counter.count(it.prompt or "") for it in items]
    assert counts == [it.input_tokens for it in items]
    assert len(set(counts)) > 50  # really varied, not one length repeated
    assert all(4 <= it.max_tokens <= 90 for it in items)


@pytest.mark.parametrize("n", [1, 5, 33, 200])
def test_word_counter_synthetic_prompts_are_exact(n: int) -> None:
    counter = WordCounter()
    items = build_workload(synthetic(LengthDist(value=n)), counter, 10, seed=1)
    assert [counter.count(it.prompt or "") for it in items] == [n] * 10
    assert all(len((it.prompt or "").split()) == n for it in items)


def test_word_counter_counts_and_truncates_whitespace_words() -> None:
    c = WordCounter()
    assert c.count("") == 0
    assert c.count("one two  three") == 3
    assert c.count(" leading and trailing ") == 4  # the trailing whitespace run is a token
    assert c.truncate("one two three four", 2) == "one two"
    assert c.truncate("one", 5) == "one"


def test_load_tokenizer_without_tokenizer_json_counts_words(tmp_path: Path) -> None:
    assert isinstance(load_tokenizer(None), WordCounter)
    assert isinstance(load_tokenizer(tmp_path), WordCounter)


class OffByOne:
    """Words, but every cut keeps one word too many: a tokenizer whose cuts miss."""

    def count(self, text: str) -> int:
        return WordCounter().count(text)

    def truncate(self, text: str, n: int) -> str:
        return WordCounter().truncate(text, n + 1)


def test_a_cut_that_misses_is_recorded_with_its_real_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tokenbooth.loadgen"):
        items = build_workload(synthetic(LengthDist(value=10)), OffByOne(), 6, seed=0)
    assert [it.input_tokens for it in items] == [11] * 6
    assert "6 of 6 synthetic prompts could not be cut" in caplog.text


# ------------------------------------------------------------------------------ tokenizer paths


def test_tokenizer_path_is_a_tokenizer_json_or_a_model_directory(
    tiny_model_dir: Path, hf_counter: TokenCounter
) -> None:
    text = "Tokenization isn't whitespace-splitting: antidisestablishmentarianism!"
    for path in (tiny_model_dir, tiny_model_dir / "tokenizer.json"):
        counter = load_tokenizer_file(path)
        assert not isinstance(counter, WordCounter)
        assert counter.count(text) == hf_counter.count(text) > 8
        items = build_workload(synthetic(LengthDist(value=33)), counter, 5, seed=4)
        assert [hf_counter.count(it.prompt or "") for it in items] == [33] * 5


def test_tokenizer_path_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(WorkloadError, match=rf"^\[workload\] tokenizer: not found: {missing}$"):
        load_tokenizer_file(missing)
    with pytest.raises(WorkloadError, match=rf"{tmp_path} is a directory without tokenizer.json"):
        load_tokenizer_file(tmp_path)
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"version": "1.0", "model": ')
    with pytest.raises(WorkloadError, match=rf"^\[workload\] tokenizer: cannot load {broken}: "):
        load_tokenizer_file(broken)
    with pytest.raises(WorkloadError, match=rf"cannot load {broken}"):
        load_tokenizer_file(tmp_path)  # a model directory whose tokenizer.json is broken


def test_a_relative_tokenizer_path_is_relative_to_the_spec(
    tiny_model_dir: Path, hf_counter: TokenCounter
) -> None:
    def no_builtin() -> tuple[TokenCounter, str]:
        raise AssertionError("a path is loaded, never the built-in tokenizer")

    choice = choose_tokenizer(
        "model/tokenizer.json",
        url="http://127.0.0.1:9",  # never called: a path needs no server
        kind="vllm",
        model="m",
        headers={},
        builtin=no_builtin,
        base_dir=tiny_model_dir.parent,
    )
    assert choice.source == "file"
    assert choice.environment() == {
        Tokenizer.SOURCE: "file",
        Tokenizer.DETAIL: str(tiny_model_dir / "tokenizer.json"),
        Tokenizer.WARNING: "",
    }
    assert choice.counter.count("antidisestablishmentarianism") == hf_counter.count(
        "antidisestablishmentarianism"
    )


# ------------------------------------------------------------------------------ distributions


def test_fixed_lengths() -> None:
    rng = np.random.default_rng(0)
    assert sample_lengths(LengthDist(value=17), 5, rng) == [17] * 5


def test_uniform_lengths_cover_inclusive_bounds() -> None:
    rng = np.random.default_rng(0)
    values = sample_lengths(LengthDist(dist="uniform", min=3, max=9), 5000, rng)
    assert min(values) == 3
    assert max(values) == 9
    assert set(values) == set(range(3, 10))
    counts = np.bincount(values)[3:]
    assert counts.min() > 0.8 * 5000 / 7  # roughly uniform


def test_normal_lengths_are_clipped_and_centred() -> None:
    rng = np.random.default_rng(0)
    dist = LengthDist(dist="normal", mean=50, std=20, min=30, max=80)
    values = np.array(sample_lengths(dist, 20_000, rng))
    assert values.min() == 30
    assert values.max() == 80
    assert np.all(values == np.rint(values))
    # Clipping piles up mass at the bounds: P(X < 30) = P(Z < -1) ~ 0.159.
    assert abs((values == 30).mean() - 0.159) < 0.015
    assert abs(np.median(values) - 50) <= 1
    unclipped = np.array(
        sample_lengths(
            LengthDist(dist="normal", mean=50, std=5, min=1, max=1000),
            20_000,
            np.random.default_rng(1),
        )
    )
    assert abs(unclipped.mean() - 50) < 0.2
    assert abs(unclipped.std() - 5) < 0.2


def test_normal_with_zero_std_is_the_mean() -> None:
    dist = LengthDist(dist="normal", mean=12, std=0, min=1, max=100)
    assert sample_lengths(dist, 4, np.random.default_rng(0)) == [12] * 4


def test_workloads_are_reproducible_from_the_seed() -> None:
    spec = synthetic(
        LengthDist(dist="uniform", min=5, max=50), LengthDist(dist="uniform", min=1, max=64)
    )
    a = build_workload(spec, WordCounter(), 50, seed=42)
    b = build_workload(spec, WordCounter(), 50, seed=42)
    c = build_workload(spec, WordCounter(), 50, seed=43)
    assert a == b
    assert [it.prompt for it in a] != [it.prompt for it in c]
    assert [it.max_tokens for it in a] != [it.max_tokens for it in c]


def test_max_tokens_cap() -> None:
    spec = synthetic(LengthDist(value=3), LengthDist(value=5000))
    items = build_workload(spec, WordCounter(), 3, seed=0, max_tokens_cap=256)
    assert [it.max_tokens for it in items] == [256] * 3


# ------------------------------------------------------------------------------ files


def test_shipped_jsonl_sample_loads() -> None:
    lines = [json.loads(x) for x in (DATA / "sample_prompts.jsonl").read_text().splitlines() if x]
    spec = WorkloadSpec(kind="file", path=str(DATA / "sample_prompts.jsonl"), format="jsonl")
    items = build_workload(spec, WordCounter(), len(lines) * 2, seed=0)
    assert len(items) == len(lines) * 2
    expected = {json.dumps(x["messages"]) for x in lines}
    assert {json.dumps(list(it.messages or ())) for it in items} == expected
    for it in items:
        assert it.messages is not None
        assert it.prompt is None
        assert it.input_tokens == WordCounter().count("\n".join(m["content"] for m in it.messages))
    by_messages = {json.dumps(x["messages"]): x.get("max_tokens") for x in lines}
    for it in items:
        file_max = by_messages[json.dumps(list(it.messages or ()))]
        if file_max:
            assert it.max_tokens == file_max


def test_shipped_sharegpt_sample_loads() -> None:
    convs = json.loads((DATA / "sample_sharegpt.json").read_text())
    spec = WorkloadSpec(kind="file", path=str(DATA / "sample_sharegpt.json"), format="sharegpt")
    counter = WordCounter()
    items = build_workload(spec, counter, 40, seed=0)
    assert len(items) == 40
    replies = {}
    for conv in convs:
        turns = conv["conversations"]
        human = next(t["value"] for t in turns if t["from"] in ("human", "user"))
        reply = next(t["value"] for t in turns if t["from"] in ("gpt", "assistant"))
        replies[human] = reply
    for it in items:
        assert it.prompt is not None
        assert it.prompt in replies
        assert it.max_tokens == max(1, counter.count(replies[it.prompt]))
        assert it.input_tokens == counter.count(it.prompt)
    assert {it.prompt for it in items} == set(replies)  # 40 draws cover every conversation


def test_file_workload_order_is_seeded(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(30)))
    spec = WorkloadSpec(kind="file", path=str(path), output_tokens=LengthDist(value=9))
    a = build_workload(spec, WordCounter(), 30, seed=1)
    b = build_workload(spec, WordCounter(), 30, seed=1)
    c = build_workload(spec, WordCounter(), 30, seed=2)
    assert a == b
    assert [it.prompt for it in a] != [it.prompt for it in c]
    assert sorted(it.prompt or "" for it in a) == sorted(f"prompt {i}" for i in range(30))
    assert all(it.max_tokens == 9 for it in a)  # no max_tokens in the file: the distribution's


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "broken"\n')
    spec = WorkloadSpec(kind="file", path=str(path))
    with pytest.raises(WorkloadError, match=rf"^{path}:3: invalid JSON"):
        build_workload(spec, WordCounter(), 4, seed=0)


def test_jsonl_object_without_prompt_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(WorkloadError, match=rf"^{path}:2: expected an object"):
        build_workload(WorkloadSpec(kind="file", path=str(path)), WordCounter(), 4, seed=0)


def test_empty_or_missing_files_are_workload_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(WorkloadError, match="no usable prompts"):
        build_workload(WorkloadSpec(kind="file", path=str(empty)), WordCounter(), 4, seed=0)
    with pytest.raises(WorkloadError, match="not found"):
        build_workload(
            WorkloadSpec(kind="file", path=str(tmp_path / "none.jsonl")), WordCounter(), 4, seed=0
        )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(WorkloadError, match=rf"^{bad}: invalid JSON"):
        build_workload(
            WorkloadSpec(kind="file", path=str(bad), format="sharegpt"), WordCounter(), 4, seed=0
        )
    obj = tmp_path / "obj.json"
    obj.write_text('{"conversations": []}')
    with pytest.raises(WorkloadError, match="must be a list"):
        build_workload(
            WorkloadSpec(kind="file", path=str(obj), format="sharegpt"), WordCounter(), 4, seed=0
        )


# ------------------------------------------------------------------------------ request bodies


def test_chat_body_from_a_prompt() -> None:
    item = PromptItem(max_tokens=12, prompt="hello there")
    body = item.body("chat", "m", ignore_eos=True, temperature=0.0)
    assert body == {
        "model": "m",
        "max_tokens": 12,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "hello there"}],
    }


def test_chat_body_keeps_messages_and_omits_ignore_eos_when_off() -> None:
    msgs = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    body = PromptItem(max_tokens=3, messages=msgs).body(
        "chat", "m", ignore_eos=False, temperature=0.7
    )
    assert body["messages"] == list(msgs)
    assert "ignore_eos" not in body
    assert "prompt" not in body
    assert body["temperature"] == 0.7
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_completions_body() -> None:
    body = PromptItem(max_tokens=5, prompt="once upon").body(
        "completions", "m", ignore_eos=True, temperature=0.0
    )
    assert body["prompt"] == "once upon"
    assert "messages" not in body
    assert body["ignore_eos"] is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    msgs = ({"role": "user", "content": "a"}, {"role": "user", "content": "b"})
    body = PromptItem(max_tokens=5, messages=msgs).body(
        "completions", "m", ignore_eos=False, temperature=0.0
    )
    assert body["prompt"] == "a\nb"
    assert "ignore_eos" not in body


def test_bodies_are_valid_service_requests() -> None:
    # The wire types live in service.schemas: the harness's bodies must decode there.
    item = PromptItem(max_tokens=4, prompt="hi")
    for api, typ in (("chat", ChatCompletionRequest), ("completions", CompletionRequest)):
        body = item.body(api, "m", ignore_eos=True, temperature=0.0)
        decoded = msgspec.json.decode(msgspec.json.encode(body), type=typ)
        assert decoded.max_tokens == 4
        assert decoded.stream is True
        assert decoded.ignore_eos is True
        assert decoded.stream_options is not None
        assert decoded.stream_options.include_usage is True
