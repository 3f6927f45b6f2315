"""Rebuild a Hugging Face ``tokenizer.json`` from a GGUF vocabulary.

GGUF files carry their byte-level BPE vocabulary, merges, special tokens and chat template as
``tokenizer.ggml.*`` metadata; a model directory needs them as ``tokenizer.json`` (read by
``tokenizers``) and ``chat_template.jinja``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from service.errors import ModelBuildError
from service.models.paths import CHAT_TEMPLATE_FILENAME, TOKENIZER_FILENAME

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["Vocab", "vocab_from_gguf", "write_tokenizer_files"]

logger = logging.getLogger(__name__)

# llama.cpp pre-tokenizer presets that split every digit on its own before the GPT-2 regex
# (llama-vocab.cpp groups them with STARCODER). Hugging Face expresses this as a
# ``Digits(individual_digits=True)`` pre-tokenizer in front of ``ByteLevel``.
_DIGIT_SPLITTING_PRESETS: Final = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
)
# Presets whose split regex is exactly GPT-2's, which ``ByteLevel(use_regex=True)`` applies.
_GPT2_REGEX_PRESETS: Final = frozenset({"default", "gpt-2", "mpt", "olmo", "jais"})
_GGUF_TOKEN_TYPE_CONTROL: Final = 3
_GGUF_TOKEN_TYPE_USER_DEFINED: Final = 4


@dataclass(frozen=True)
class Vocab:
    """A GGUF vocabulary converted for CTranslate2 and ``tokenizers``."""

    tokens: tuple[str, ...]
    tokenizer_json: str
    chat_template: str | None
    bos_token: str
    eos_tokens: tuple[str, ...]
    unk_token: str
    add_bos_token: bool


def vocab_from_gguf(metadata: Mapping[str, Any]) -> Vocab:
    """Rebuild a byte-level BPE tokenizer from GGUF ``tokenizer.ggml.*`` metadata.

    Raises:
        ModelBuildError: The vocabulary is not byte-level BPE, or is missing or malformed.
    """
    tokens, token_types, merge_pairs = _vocab_lists(metadata)
    tokenizer = _byte_level_bpe(
        tokens, token_types, merge_pairs, metadata.get("tokenizer.ggml.pre", "default")
    )

    def token_at(key: str) -> str | None:
        index = metadata.get(key)
        if isinstance(index, int) and 0 <= index < len(tokens):
            return str(tokens[index])
        return None

    eos = token_at("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise ModelBuildError("GGUF file has no tokenizer.ggml.eos_token_id")
    eos_tokens = [eos]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = token_at(key)
        if extra is not None and extra not in eos_tokens:
            eos_tokens.append(extra)
    template = metadata.get("tokenizer.chat_template")
    return Vocab(
        tokens=tuple(tokens),
        tokenizer_json=tokenizer.to_str(),
        chat_template=template if isinstance(template, str) and template else None,
        bos_token=token_at("tokenizer.ggml.bos_token_id") or eos,
        eos_tokens=tuple(eos_tokens),
        unk_token=token_at("tokenizer.ggml.unknown_token_id") or "",
        add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
    )


def _vocab_lists(
    metadata: Mapping[str, Any],
) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """Tokens, token types and BPE merge pairs from the metadata, each checked."""
    tokenizer_model = metadata.get("tokenizer.ggml.model")
    if tokenizer_model != "gpt2":
        raise ModelBuildError(
            f"GGUF tokenizer model {tokenizer_model!r} is not supported; only byte-level BPE "
            "('gpt2') vocabularies can be converted"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list) or not tokens:
        raise ModelBuildError("GGUF file has no tokenizer.ggml.tokens / tokenizer.ggml.merges")
    token_types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(token_types) != len(tokens):
        raise ModelBuildError("GGUF tokenizer.ggml.token_type does not match the vocabulary")
    if len(set(tokens)) != len(tokens):
        raise ModelBuildError("GGUF vocabulary has duplicate tokens")
    merge_pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right or " " in right:
            raise ModelBuildError(f"malformed BPE merge in GGUF: {merge!r}")
        merge_pairs.append((left, right))
    return tokens, token_types, merge_pairs


def _byte_level_bpe(
    tokens: list[str], token_types: list[int], merge_pairs: list[tuple[str, str]], preset: Any
) -> Tokenizer:
    """A ``tokenizers`` BPE with llama.cpp's pre-tokenizer preset and added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if preset not in _DIGIT_SPLITTING_PRESETS | _GPT2_REGEX_PRESETS:
        logger.warning(
            "GGUF pre-tokenizer %r is approximated with GPT-2 byte-level splitting; "
            "tokenization may differ slightly from the original model",
            preset,
        )
    if preset in _DIGIT_SPLITTING_PRESETS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    added = [
        AddedToken(token, special=kind == _GGUF_TOKEN_TYPE_CONTROL, normalized=False)
        for token, kind in zip(tokens, token_types, strict=True)
        if kind in (_GGUF_TOKEN_TYPE_CONTROL, _GGUF_TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])
    return tokenizer


def write_tokenizer_files(vocab: Vocab, output_dir: Path) -> None:
    """Write ``tokenizer.json`` and, when the GGUF has one, ``chat_template.jinja``."""
    (output_dir / TOKENIZER_FILENAME).write_text(vocab.tokenizer_json, encoding="utf-8")
    if vocab.chat_template is not None:
        (output_dir / CHAT_TEMPLATE_FILENAME).write_text(vocab.chat_template, encoding="utf-8")
