"""Render Jinja chat templates the way Hugging Face transformers does.

Templates come from model files (GGUF metadata, tokenizer_config.json) and are untrusted
code, so they run in Jinja's immutable sandbox. The environment mirrors transformers'
(`trim_blocks`, `lstrip_blocks`, `raise_exception`, `strftime_now`, a `tojson` that does
not HTML-escape) so a template renders byte-for-byte as it does there: the model was
trained on exactly those bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

logger = logging.getLogger(__name__)

# Used when a model ships no template: ChatML is what most small instruct models speak.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Compiled templates kept; a server sees a handful of distinct templates.
TEMPLATE_CACHE_SIZE = 32


class ChatTemplateError(ValueError):
    """The template failed to render (bad template or messages it rejects)."""


def _raise_exception(message: str) -> None:
    # Templates call this to reject conversations (e.g. roles not alternating).
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes '<' etc., which would change the prompt bytes.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def compile_template(source: str) -> jinja2.Template:
    """Compile `source` in the sandbox (cached by source text)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def render_chat_template(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """The prompt text for `messages`; `template=None` uses ChatML.

    `extra` reaches the template as variables (e.g. `pad_token`, `enable_thinking`).
    """
    compiled = compile_template(template if template is not None else CHATML_TEMPLATE)
    context: dict[str, Any] = {
        "messages": [dict(m) for m in messages],
        "add_generation_prompt": add_generation_prompt,
        # Templates test `bos_token` with `{{ bos_token }}`; undefined would render ''.
        "bos_token": bos_token or "",
        "eos_token": eos_token or "",
        "tools": tools,
        "documents": None,
        **extra,
    }
    try:
        return compiled.render(**context)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(str(exc)) from exc
    except Exception as exc:  # untrusted template code: e.g. `'x' + None` is a TypeError
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc
