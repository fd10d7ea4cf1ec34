"""Errors the API answers with a 4xx status and `{"error": "..."}` (never a server crash)."""

from __future__ import annotations

from segmote.errors import SegmoteError


class ApiError(SegmoteError):
    """An expected failure with the HTTP status to answer; `str(err)` is the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")
