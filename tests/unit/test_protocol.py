import json

import pytest
from pydantic import ValidationError

from app.protocol.chat import ChatCompletionRequest
from app.protocol.sse import SSE_DONE, sse_comment, sse_data


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
