"""Errors a user can act on.

Every expected failure (bad file, bad prompt, mismatched checkpoint) raises ``SegmoteError`` with a
one-line message naming the file or argument and the problem. The CLI catches it, prints the line
and exits non-zero without a traceback.
"""

from __future__ import annotations


class SegmoteError(Exception):
    """An expected, user-facing error; ``str(err)`` is the one line shown to the user."""


class InputError(SegmoteError):
    """A file or argument given by the user cannot be used (missing, unreadable, out of range)."""


class CheckpointError(SegmoteError):
    """A weights or adapter file does not fit the requested model or is not safe to load."""
