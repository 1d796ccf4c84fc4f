"""Chat template rendering: HF-compatible Jinja environment, ChatML fallback, SmolLM2's own."""

from __future__ import annotations

import pytest

from app.text.chat_template import (
    CHATML_TEMPLATE,
    ChatTemplateError,
    render_chat_template,
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
]
CHATML_EXPECTED = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
)
GENERATION_PROMPT = "<|im_start|>assistant\n"


def test_fallback_is_chatml_with_generation_prompt() -> None:
    text = render_chat_template(None, CONVERSATION, add_generation_prompt=True)
    assert text == CHATML_EXPECTED + GENERATION_PROMPT
    assert render_chat_template(CHATML_TEMPLATE, CONVERSATION) == text


def test_no_generation_prompt() -> None:
    assert render_chat_template(None, CONVERSATION, add_generation_prompt=False) == CHATML_EXPECTED


def test_trim_and_lstrip_blocks_like_transformers() -> None:
    # Block tags on their own (indented) lines must leave no newlines or indentation behind.
    template = (
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'user' %}\n"
        "[{{ m['content'] }}]\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
    )
    assert render_chat_template(template, CONVERSATION) == "[Hi!]\n[What is 2+2?]\n"


def test_special_token_variables_and_helpers() -> None:
    template = (
        "{{ bos_token }}{{ messages[0]['content'] | tojson }}"
        "{% if strftime_now('%Y') | length == 4 %}|year{% endif %}{{ eos_token }}"
    )
    text = render_chat_template(
        template, [{"role": "user", "content": "<b>é</b>"}], bos_token="<s>", eos_token="</s>"
    )
    # tojson neither HTML-escapes nor ASCII-escapes, as in transformers.
    assert text == '<s>"<b>é</b>"|year</s>'


def test_extra_variables_reach_the_template() -> None:
    template = "{% if enable_thinking %}think{% else %}plain{% endif %}"
    assert render_chat_template(template, [], enable_thinking=True) == "think"
    assert render_chat_template(template, []) == "plain"


def test_raise_exception_becomes_chat_template_error() -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation must start with user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="must start with user"):
        render_chat_template(template, CONVERSATION)


def test_sandbox_blocks_mutation_and_internals() -> None:
    with pytest.raises(ChatTemplateError):
        render_chat_template("{{ messages.append(1) }}", CONVERSATION)
    with pytest.raises(ChatTemplateError):
        render_chat_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])


def test_python_errors_in_templates_become_chat_template_errors() -> None:
    # ChatML concatenates content: a null content (tool-call message) is a TypeError there.
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render_chat_template(None, [{"role": "assistant", "content": None}])


def test_syntax_error_is_reported() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for m in messages %}", CONVERSATION)
