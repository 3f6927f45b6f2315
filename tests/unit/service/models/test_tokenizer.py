"""service.models.tokenizer: the rebuilt tokenizer.json agrees with the CTranslate2 vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.models import load_model_files
from tests.unit.service.models.helpers import vocabulary

SAMPLES = [
    "What is the capital of France?",
    "  leading spaces, trailing space ",
    "Numbers 12345 and 3.14159 and 2024-06-01",
    "naïve café, 東京, emoji 🎉, tabs\tand\nnewlines\n\n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # code",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_tokens_are_ct2_vocabulary_entries(tiny_dir: Path, text: str) -> None:
    tokenizer = load_model_files(tiny_dir).tokenizer
    vocab = vocabulary(tiny_dir)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert encoding.tokens
    for token, token_id in zip(encoding.tokens, encoding.ids, strict=True):
        assert vocab[token_id] == token
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == text


def test_tokenizer_special_tokens_and_digits(tiny_dir: Path) -> None:
    tokenizer = load_model_files(tiny_dir).tokenizer
    encoding = tokenizer.encode("<|im_start|>system<|im_end|> 2024", add_special_tokens=False)
    assert encoding.tokens == ["<|im_start|>", "system", "<|im_end|>", "Ġ", "2", "0", "2", "4"]
    assert (encoding.ids[0], encoding.ids[2]) == (1, 2)
    # No BOS/EOS is added around plain text.
    assert tokenizer.encode("hi").tokens == ["hi"]
