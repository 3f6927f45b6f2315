"""The characters-per-token bound that refuses a prompt before tokenizing it must be sound."""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers import decoders as tk_decoders
from tokenizers.models import BPE

from service.engine import _max_token_chars


def _byte_level(normalizer: normalizers.Normalizer | None = None) -> Tokenizer:
    vocab = {"a": 0, "b": 1, "ab": 2, "Ġab": 3, "Ġ": 4, "abab": 5}
    tok = Tokenizer(BPE(vocab=vocab, merges=[("a", "b"), ("ab", "ab"), ("Ġ", "ab")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk_decoders.ByteLevel()
    if normalizer is not None:
        tok.normalizer = normalizer
    return tok


def test_byte_level_without_normalizer_uses_the_longest_vocabulary_entry() -> None:
    assert _max_token_chars(_byte_level()) == 4


def test_a_normalizer_that_can_shrink_text_disables_the_bound() -> None:
    """Review finding: NFC turns 'A + two combining marks' (3 chars) into fewer characters."""
    assert _max_token_chars(_byte_level(normalizers.NFC())) == 0


def test_a_tokenizer_that_is_not_byte_level_has_no_bound() -> None:
    tok = Tokenizer(BPE(vocab={"a": 0, "aa": 1}, merges=[("a", "a")]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert _max_token_chars(tok) == 0
