"""Shared-prefix synthetic workloads: every request of a group starts with the same K tokens of
the model's own tokenizer, groups are drawn with the seed, and the spec's errors are clear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from loadgen.spec import LengthDist, SpecError, WorkloadSpec, parse_spec
from loadgen.workload import (
    TokenCounter,
    WordCounter,
    build_workload,
    load_tokenizer,
    prefix_group_draws,
    prefix_texts,
)
from tests.support.tiny_model import build_tiny_model

K = 24
GROUPS = 3
N = 30


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model directory with SmolLM2's real tokenizer.json."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def counter(tiny_model_dir: Path) -> TokenCounter:
    """The workload's tokenizer for that model (what local replicas' prompts are built with)."""
    found = load_tokenizer(tiny_model_dir)
    assert not isinstance(found, WordCounter)
    return found


@pytest.fixture(scope="module")
def ids(tiny_model_dir: Path) -> Tokenizer:
    """The same tokenizer.json, read directly: token ids, not just counts."""
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def prefixed(api: str, groups: int = GROUPS, tokens: int = K) -> WorkloadSpec:
    return WorkloadSpec(
        api=api,  # type: ignore[arg-type]
        input_tokens=LengthDist(dist="uniform", min=8, max=40),
        prefix_groups=groups,
        prefix_tokens=tokens,
    )


def encode(tok: Tokenizer, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def test_completion_prompts_of_a_group_share_their_first_k_tokens(
    counter: TokenCounter, ids: Tokenizer
) -> None:
    spec = prefixed("completions")
    items = build_workload(spec, counter, N, seed=7)
    prefixes = prefix_texts(spec, counter, seed=7)
    groups = prefix_group_draws(N, GROUPS, seed=7)
    assert [len(encode(ids, p)) for p in prefixes] == [K] * GROUPS
    heads: dict[int, set[tuple[int, ...]]] = {}
    for item, g in zip(items, groups, strict=True):
        assert item.prompt is not None
        tokens = encode(ids, item.prompt)
        assert tokens[:K] == encode(ids, prefixes[g])
        assert item.input_tokens == len(tokens) > K
        heads.setdefault(g, set()).add(tuple(tokens[:K]))
    assert sorted(heads) == list(range(GROUPS))  # every group is used
    assert all(len(h) == 1 for h in heads.values())
    assert len({next(iter(h)) for h in heads.values()}) == GROUPS  # groups differ
    # Beyond the prefix every request is its own: no prompt repeats.
    assert len({it.prompt for it in items}) == N


def test_chat_prefix_is_the_system_message_before_the_unchanged_user_prompt(
    counter: TokenCounter, ids: Tokenizer
) -> None:
    plain = build_workload(prefixed("chat", 0, 0), counter, N, seed=7)
    items = build_workload(prefixed("chat"), counter, N, seed=7)
    prefixes = prefix_texts(prefixed("chat"), counter, seed=7)
    groups = prefix_group_draws(N, GROUPS, seed=7)
    for item, base, g in zip(items, plain, groups, strict=True):
        assert item.messages is not None and item.prompt is None
        system, user = item.messages
        assert system == {"role": "system", "content": prefixes[g]}
        assert len(encode(ids, system["content"])) == K
        # Prefix draws use their own seed streams: the user prompts are the no-prefix ones.
        assert user == {"role": "user", "content": base.prompt}
        assert item.input_tokens == K + base.input_tokens
    body = items[0].body("chat", "m", ignore_eos=True, temperature=0.0)
    assert body["messages"][0]["role"] == "system"


def test_groups_are_drawn_with_the_seed_not_in_turn() -> None:
    draws = prefix_group_draws(200, 4, seed=1)
    assert draws == prefix_group_draws(200, 4, seed=1)
    assert draws != prefix_group_draws(200, 4, seed=2)
    assert set(draws) == {0, 1, 2, 3}
    assert draws != [k % 4 for k in range(200)]
    # Uniform: each of 4 groups gets about a quarter of 200 (binomial sd ~6).
    assert all(25 <= draws.count(g) <= 75 for g in range(4))


def test_word_counted_prefixes_are_exact_too() -> None:
    spec = prefixed("completions", 2, 10)
    items = build_workload(spec, WordCounter(), 8, seed=3)
    groups = prefix_group_draws(8, 2, seed=3)
    prefixes = prefix_texts(spec, WordCounter(), seed=3)
    for item, g in zip(items, groups, strict=True):
        assert item.prompt is not None
        assert item.prompt.split()[:10] == prefixes[g].split()
        assert len(prefixes[g].split()) == 10


SPEC = """\
[run]
name = "p"

[workload]
{body}
"""


def spec_error(body: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(body=body), "p.toml")
    return str(info.value)


def test_prefix_keys_parse() -> None:
    spec = parse_spec(SPEC.format(body="prefix_groups = 4\nprefix_tokens = 256"), "p.toml")
    assert (spec.workload.prefix_groups, spec.workload.prefix_tokens) == (4, 256)
    assert WorkloadSpec().prefix_groups == 0  # off by default


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "prefix_groups = 4",
            "p.toml:5: [workload] prefix_groups: needs prefix_tokens > 0 too",
        ),
        (
            "prefix_tokens = 64",
            "p.toml:5: [workload] prefix_tokens: needs prefix_groups > 0 too",
        ),
        (
            "prefix_groups = -1\nprefix_tokens = 8",
            "p.toml:5: [workload] prefix_groups: must be >= 0",
        ),
        (
            'prefix_groups = "4"\nprefix_tokens = 8',
            "p.toml:5: [workload] prefix_groups: expected int",
        ),
        (
            'kind = "file"\npath = "p.toml"\nprefix_groups = 2\nprefix_tokens = 8',
            'p.toml:7: [workload] prefix_groups: shared prefixes apply to kind = "synthetic" or '
            '"sessions"',
        ),
    ],
)
def test_prefix_spec_errors_name_the_key_and_line(body: str, message: str) -> None:
    assert message in spec_error(body)
    assert re.match(r"^p\.toml:\d+: \[workload\] prefix_", spec_error(body))
