import json

import pytest
from pydantic import ValidationError

from app.protocol.chat import ChatCompletionRequest
from app.protocol.errors import APIError
from app.protocol.sse import SSE_DONE, sse_comment, sse_data
from app.protocol.transcription import TranscriptionParams


def test_sse_data_is_one_event_line() -> None:
    raw = sse_data({"text": "a\nb", "x": "é"})
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    assert raw.count(b"\n") == 2  # the JSON newline is escaped
    assert json.loads(raw[6:]) == {"text": "a\nb", "x": "é"}
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_sse_comment_cannot_break_framing() -> None:
    assert sse_comment("a\nb") == b": a b\n\n"


def test_request_accepts_unknown_fields_and_text_parts() -> None:
    req = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "some_future_field": 1, "stop": "x"})
    assert req.messages[0].text() == "hi"
    assert req.stop_list() == ["x"]
    assert req.model_extra == {"some_future_field": 1}


@pytest.mark.parametrize("bad", [
    {"messages": []},
    {"messages": [{"role": "user", "content": "x"}], "temperature": 3},
    {"messages": [{"role": "user", "content": "x"}], "top_p": 0},
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}},
    {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 101}},
    {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
    {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 17},
])
def test_request_rejects_invalid(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(bad)


def test_image_part_is_a_clear_error() -> None:
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]})
    with pytest.raises(ValueError, match="not supported"):
        req.messages[0].text()


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "hi \ud800"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
    {"messages": [{"role": "user", "content": "hi"}], "stop": ["\udc00"]},
    {"messages": [{"role": "user", "content": "hi"}], "metadata": {"\ud800": "x"}},
])
def test_lone_surrogates_are_a_validation_error(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="not valid Unicode"):
        ChatCompletionRequest.model_validate(body)
    valid = {"messages": [{"role": "user", "content": "h\u00e9llo \u2713 \U0001f600"}]}
    assert ChatCompletionRequest.model_validate(valid).messages


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "number", "maximum": float("inf")}}}}}]},
     "tools[0].function.parameters.properties.a.maximum"),
    ({"chat_template_kwargs": {"x": float("nan")}}, "chat_template_kwargs.x"),
])
def test_non_finite_numbers_are_a_validation_error(body: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], **body})
    error = info.value.errors()[0]
    assert "not a finite number" in error["msg"] and error["ctx"]["param"] == param


def test_transcription_form_text_must_be_unicode() -> None:
    with pytest.raises(APIError) as info:
        TranscriptionParams(prompt="ok", granularities=["word", "\ud800"])
    assert info.value.status == 400 and info.value.param == "timestamp_granularities[]"
    assert TranscriptionParams(prompt="caf\u00e9").prompt == "caf\u00e9"
