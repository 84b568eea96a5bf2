"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, for every bad request, and the
request parsing that produces them (malformed JSON, wrong types, unknown fields, oversized bodies)."""
from __future__ import annotations

import json
import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """A request the server refuses: HTTP `status`, a message naming the argument (`param`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


def _param(loc) -> str | None:
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("function-after", "list", "str",
                                                                                   "int", "float", "bool")))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def validation_error(e: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the parameter (OpenAI says 'invalid_request_error')."""
    err = e.errors(include_url=False)[0]
    param, kind = _param(err["loc"]), err["type"]
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param)
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param)
    got = err.get("input")
    shown = json.dumps(got)[:80] if isinstance(got, (int, float, str, bool, type(None))) else type(got).__name__
    return APIError(400, f"Invalid value for '{param}': {err['msg']} (got {shown}).", param)


async def parse_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The JSON body validated against `model`; any problem is a 400 APIError."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}). The body must be a JSON "
                            "object; set Content-Type: application/json.") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, got a JSON {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
    except (ValueError, TypeError) as e:  # a validator's own check
        raise APIError(400, str(e)) from None


def install_handlers(app, max_body_bytes: int) -> None:
    """APIError, HTTP errors (404 / 405 ...) and anything unexpected as OpenAI-shaped JSON; bodies past
    `max_body_bytes` are refused with 413 before they are read whole."""

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else None
        return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=kind)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)


class BodyLimit:
    """ASGI middleware: a request body larger than `max_bytes` (by Content-Length, or counted as it streams in)
    gets a 413 in OpenAI's error shape."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        resp = error_response(413, f"The request body is larger than the server's limit of {self.max_bytes:,} bytes "
                                   "(mmfm serve --max-body-mb).", code="request_too_large")
        await resp(scope, receive, send)


class _TooLarge(Exception):
    pass
