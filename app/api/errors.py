"""Error handlers: every error a client can see leaves in OpenAI's envelope
(app/protocol/errors.py) with the matching status code; FastAPI's own 422 shape never
reaches a client.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.protocol.body import ERROR_TYPE
from app.protocol.errors import STATUS_TYPES, APIError, error_body

logger = logging.getLogger(__name__)

# pydantic names the member of a union a value failed in the error's location
# ("prompt.str", "tool_choice.literal['none']", "content.list[TextPart]"): not a field
UNION_TAG = re.compile(r"str|int|float|bool|dict|list|none|[A-Z]\w*|[a-z-]+\[.+\]")


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")
             and not (isinstance(p, str) and UNION_TAG.fullmatch(p))]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "Request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")), None
    if first.get("type") == ERROR_TYPE:  # app/protocol/body.py names the field itself
        return str(first["msg"]), first["ctx"]["param"]
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param is None and first.get("type") == "missing":
        return "Request body is required", None
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        typ = STATUS_TYPES.get(exc.status_code, "invalid_request_error")
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(error_body(str(exc.detail), typ, None, code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        # The log has the traceback; the client gets no internals (not even the type)
        return JSONResponse(error_body("The server had an error while processing your "
                                       "request.", "server_error"), status_code=500)
