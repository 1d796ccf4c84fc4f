"""End-to-end: schemathesis against the server's own /openapi.json. Every operation gets
generated requests, schema-valid and (where it has a body) invalid; none may get a 5xx
(schemathesis' `not_a_server_error` check). Bounded: few examples, a fixed seed, and
replies of at most a few tokens, so the whole run stays well under a minute."""

from __future__ import annotations

from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from tests.harness import Server

MAX_EXAMPLES = 20  # per operation and generation mode
MAX_REPLY_TOKENS = 4
# Sequences one request runs (n, several prompts): on a shared CPU a batch of 8+ takes
# seconds per token, so a generated n=16 alone could spend the test's time
MAX_SEQUENCES = 2
# Routes that run the model, and their token-budget fields: a missing or large budget
# would mean a reply of up to the whole context
TOKEN_FIELDS = {"/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
                "/v1/completions": ("max_tokens",),
                "/v1/responses": ("max_output_tokens",)}
REQUEST_TIMEOUT = 60.0


def _cheap(case: Case) -> None:
    """Cap the reply's length and its sequences; any other generated value (and an invalid
    budget) stays."""
    fields = TOKEN_FIELDS.get(case.operation.path)
    if not fields or not isinstance(case.body, dict):
        return
    n = _number(case.body.get("n"))
    if n is not None and n > MAX_SEQUENCES:
        case.body["n"] = MAX_SEQUENCES
    prompt = case.body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        case.body["prompt"] = prompt[:MAX_SEQUENCES]
    for name in fields:
        value = case.body.get(name)
        unset = value is None and name == fields[0]  # the default: the context's rest
        budget = _number(value)
        if unset or (budget is not None and budget > MAX_REPLY_TOKENS):
            case.body[name] = MAX_REPLY_TOKENS


def _number(value: Any) -> float | None:
    """What pydantic's lax mode would read as a number: 5000, 5000.0 or "5000"."""
    if isinstance(value, bool | int | float | str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _call(case: Case, base_url: str, session: requests.Session) -> None:
    _cheap(case)
    response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
    assert response.status_code < 500, \
        f"{case.as_curl_command()}\n-> {response.status_code} {response.text[:500]}"
    case.validate_response(response, checks=[not_a_server_error])


def _fuzz(operation: APIOperation, mode: GenerationMode, base_url: str,
          session: requests.Session) -> None:
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def check(case: Case) -> None:
        _call(case, base_url, session)

    check()


def test_no_server_errors_on_any_operation(server: Server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) >= 10  # every router, none the schema breaks
    with requests.Session() as session:
        for operation in operations:
            # Without a body, a string path parameter has no invalid value to generate
            modes = [GenerationMode.POSITIVE] + \
                ([GenerationMode.NEGATIVE] if operation.body else [])
            for mode in modes:
                _fuzz(operation, mode, server.url, session)
            if operation.path in TOKEN_FIELDS:
                continue  # hundreds of replies: a minute and more (run the CLI for those)
            # schemathesis' coverage phase: boundary values, missing fields, other methods
            config = schema.config.generation_for(operation=operation)
            for case in schema.iter_coverage_cases(operation, generation_modes=modes,
                                                   generation_config=config):
                _call(case, server.url, session)
