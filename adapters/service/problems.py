"""Errors as RFC 9457 problem details (`application/problem+json`), one shape for every route.

A handler raises `Problem` (or any `DomainVLMError`, whose message is already written for the
person who sent the bad input); the app turns it into `{type, title, status, detail,
instance, request_id}`. Unexpected exceptions become a 500 that names only the request id:
their text may quote input, and input may hold patient data.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from domainvlm.errors import BaseMismatchError, DomainVLMError

MEDIA_TYPE = "application/problem+json"
TYPE_ROOT = "https://domainvlm.dev/problems/"
log = logging.getLogger("domainvlm.serve")


class Problem(Exception):
    """An HTTP error with a slug for its type (`TYPE_ROOT` + slug) and a human detail."""

    def __init__(self, status: int, detail: str, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers
        self.slug = slug or _slug(status)


def _slug(status: int) -> str:
    """The problem type of a bare status: its phrase, e.g. "not-found"."""
    return HTTPStatus(status).phrase.lower().replace(" ", "-")


def status_of(exc: DomainVLMError) -> int:
    """The HTTP status of a domainvlm error: its class's `http_status`, else by kind."""
    explicit = getattr(exc, "http_status", None)
    if explicit:
        return int(explicit)
    if isinstance(exc, BaseMismatchError | FileExistsError):
        return 409
    if isinstance(exc, LookupError):
        return 404
    return 400


def body(request: Request, status: int, detail: str, slug: str) -> dict[str, Any]:
    return {"type": TYPE_ROOT + slug, "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, "instance": request.url.path,
            "request_id": getattr(request.state, "request_id", None)}


def response(request: Request, status: int, detail: str, slug: str | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    slug = slug or _slug(status)
    return JSONResponse(body(request, status, detail, slug), status_code=status,
                        media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Route every error of `app` through `response`."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return response(request, exc.status, exc.detail, exc.slug, exc.headers)

    @app.exception_handler(DomainVLMError)
    async def _domain(request: Request, exc: DomainVLMError) -> JSONResponse:
        status = status_of(exc)
        return response(request, status, str(exc), type(exc).__name__.lower())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return response(request, 422, "; ".join(parts) or "invalid request", "invalid-request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return response(request, exc.status_code, str(exc.detail), None,
                        getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s", type(exc).__name__, exc_info=False)
        return response(request, 500, "the server failed on this request; quote its "
                        "request_id when you report it", "internal")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route that may answer with these statuses (400, 401, 422,
    429 and 500 always: every keyed route can)."""
    ref = {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
    return {status: {"model": ProblemDetails, "description": HTTPStatus(status).phrase,
                     "content": {MEDIA_TYPE: ref}}
            for status in sorted({400, 401, 422, 429, 500, *statuses})}
