"""Structured output through the engine on the tiny random-weight model: whatever a
random model would write, the JSON parses and validates (app/text/grammar.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from app.engine.engine import Engine
from app.engine.request import GenerationRequest, SamplingParams
from app.text.grammar import GrammarError, TokenGrammar
from app.text.reply_parser import Content, ReplyParser, ToolCallPart
from app.text.tool_syntax import HERMES, LLAMA3, MISTRAL, ToolSyntax
from tests.engine_harness import MODEL_ID, collect, prompt_ids

SEEDS = range(20)
MAX_TOKENS = 256
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object", "additionalProperties": False, "required": ["name", "address"],
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "address": {"type": "object", "additionalProperties": False,
                        "required": ["city", "zip"],
                        "properties": {"city": {"type": "string", "maxLength": 8},
                                       "zip": {"type": "integer", "minimum": 0,
                                               "maximum": 99999}}}}},
    "enums": {
        "type": "object", "additionalProperties": False, "required": ["color", "ok", "size"],
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
                       "size": {"type": "integer", "minimum": 1, "maximum": 9}}},
    "array": {
        "type": "object", "additionalProperties": False, "required": ["items"],
        "properties": {"items": {
            "type": "array", "minItems": 1, "maxItems": 3,
            "items": {"type": "object", "additionalProperties": False,
                      "required": ["id", "tag"],
                      "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "tag": {"enum": ["a", "b"]}}}}}},
}


@pytest.fixture
def grammar(engine: Engine) -> TokenGrammar:
    handle = engine.loaded_chat(MODEL_ID)
    assert handle is not None
    tokenizer_json = handle.tokenizer.tokenizer_json()
    assert tokenizer_json is not None
    return TokenGrammar(tokenizer_json, handle.tokenizer.eos_token_ids)


async def _outputs(engine: Engine, grammar: TokenGrammar, schema: dict[str, Any] | None,
                   temperature: float = 1.0) -> list[tuple[str, str | None]]:
    ids = prompt_ids(engine, "Answer in JSON: ")
    reqs = [GenerationRequest(MODEL_ID, ids, MAX_TOKENS,
                              SamplingParams(temperature=temperature, seed=seed),
                              constraint=grammar.json(schema, MAX_TOKENS)) for seed in SEEDS]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    return [(r.text, r.finish.reason if r.finish else None) for r in results]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_json_schema_output_validates_for_every_seed(engine: Engine, grammar: TokenGrammar,
                                                           name: str) -> None:
    outputs = await _outputs(engine, grammar, SCHEMAS[name])
    for text, finish in outputs:
        assert finish == "stop", (text, finish)
        jsonschema.validate(json.loads(text), SCHEMAS[name])
    assert len({text for text, _ in outputs}) > 1  # the seeds did sample different values


async def test_json_object_output_always_parses(engine: Engine, grammar: TokenGrammar) -> None:
    outputs = await _outputs(engine, grammar, None)
    for text, finish in outputs:
        assert finish == "stop", (text, finish)
        assert isinstance(json.loads(text), dict)
    # some of these seeds wander inside a string until the budget closes the document
    assert max(len(text) for text, _ in outputs) > MAX_TOKENS // 2


async def test_greedy_constrained_output_is_the_same_every_time(
        engine: Engine, grammar: TokenGrammar) -> None:
    first = await _outputs(engine, grammar, SCHEMAS["enums"], 0.0)
    second = await _outputs(engine, grammar, SCHEMAS["enums"], 0.0)
    assert first == second
    jsonschema.validate(json.loads(first[0][0]), SCHEMAS["enums"])


def test_a_schema_the_engine_cannot_enforce_says_why(grammar: TokenGrammar) -> None:
    with pytest.raises(GrammarError) as err:
        grammar.json({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    assert str(err.value)


CALL_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": "get_weather"}, "arguments": {
             "type": "object", "additionalProperties": False, "required": ["city"],
             "properties": {"city": {"type": "string", "maxLength": 12}}}}},
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": "get_time"}, "arguments": {
             "type": "object", "additionalProperties": False, "required": ["tz"],
             "properties": {"tz": {"enum": ["CET", "UTC"]}}}}},
    ],
    "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
}


@pytest.mark.parametrize("syntax", [HERMES, MISTRAL, LLAMA3], ids=lambda s: s.name)
async def test_forced_tool_calls_always_parse(engine: Engine, grammar: TokenGrammar,
                                              syntax: ToolSyntax) -> None:
    schema = CALL_SCHEMA
    if syntax is LLAMA3:  # llama3 names the arguments "parameters"
        text = json.dumps(schema).replace('"arguments"', '"parameters"')
        schema = json.loads(text)
    ids = prompt_ids(engine, "Call a tool: ")
    reqs = [GenerationRequest(MODEL_ID, ids, MAX_TOKENS, SamplingParams(temperature=1.0,
                                                                        seed=seed),
                              constraint=grammar.lark(syntax.grammar(schema, 2)))
            for seed in SEEDS]
    for result in await asyncio.gather(*(collect(engine, r) for r in reqs)):
        assert result.finish is not None and result.finish.reason == "stop", result.text
        parser = ReplyParser(syntax)
        parts = parser.feed(result.text) + parser.finish()
        calls = [p for p in parts if isinstance(p, ToolCallPart)]
        assert 1 <= len(calls) <= 2 and not any(isinstance(p, Content) for p in parts)
        for call in calls:
            args = json.loads(call.arguments)
            assert (call.name, set(args)) in (("get_weather", {"city"}), ("get_time", {"tz"}))
