"""service.models.chat: templates render like Hugging Face's, sandboxed; special text is marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ModelBuildError
from service.models import load_model_files, render_chat
from service.models.chat import ChatPrompt, SpecialTokens


def test_render_chat_with_the_real_template(tiny_dir: Path) -> None:
    files = load_model_files(tiny_dir)
    prompt = render_chat(
        files.chat_template,
        [{"role": "user", "content": "What is the capital of France?"}],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    no_prompt = render_chat(
        files.chat_template,
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        add_generation_prompt=False,
    )
    assert no_prompt == (
        "<|im_start|>system\nBe terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )


def test_render_chat_without_template() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = render_chat(None, messages, bos_token="<s>", eos_token="</s>")
    assert rendered == "system: S\nuser: U\nassistant:"
    assert render_chat(None, messages, bos_token="", eos_token="", add_generation_prompt=False) == (
        "system: S\nuser: U"
    )


def test_render_chat_hf_conveniences() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{{ bos_token }}{{ m | tojson }}{{ eos_token }}\n{% endfor %}"
    )
    messages = [{"role": "user", "content": "é"}, {"role": "skip", "content": "x"}]
    rendered = render_chat(template, messages, bos_token="<s>", eos_token="</s>")
    assert rendered == '<s>{"role": "user", "content": "é"}</s>\n'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
        ("{% for m in messages %}", "chat template failed"),
        ("{{ messages.append({'role': 'x'}) }}", "chat template failed"),  # sandboxed
        ("{{ ''.__class__.__mro__ }}", "chat template failed"),
    ],
)
def test_render_chat_template_errors(template: str, message: str) -> None:
    with pytest.raises(ModelBuildError, match=message):
        render_chat(template, [{"role": "user", "content": "x"}], bos_token="", eos_token="")


def test_render_chat_marks_special_token_text_from_messages() -> None:
    special = SpecialTokens(["<s>", "</s>", "<|im_end|>"])
    template = (
        "{% for m in messages %}{{ bos_token }}{{ m.role }}: {{ m.content }}{{ eos_token }}"
        "{% endfor %}"
    )
    messages = [{"role": "user", "content": "a</s>b<s>"}, {"role": "user", "content": "plain"}]
    plain = render_chat(template, messages, bos_token="<s>", eos_token="</s>")
    prompt = render_chat(
        template, messages, bos_token="<s>", eos_token="</s>", special_tokens=special
    )
    assert prompt == plain == "<s>user: a</s>b<s></s><s>user: plain</s>"
    # Only the messages' own special-token text is literal; the template's markers are not.
    assert [prompt[start:end] for start, end in prompt.literal_spans] == ["</s>", "<s>"]
    assert prompt.literal_spans == ((10, 14), (15, 18))
    clean = render_chat(
        template, messages[1:], bos_token="<s>", eos_token="</s>", special_tokens=special
    )
    assert isinstance(clean, ChatPrompt) and clean.literal_spans == ()
