"""Errors a user can act on.

Every expected failure (bad file, bad prompt, mismatched checkpoint) raises ``SegmoteError`` with a
one-line message naming the file or argument and the problem. The CLI catches it, prints the line
and exits non-zero without a traceback.
"""

from __future__ import annotations

import re


class SegmoteError(Exception):
    """An expected, user-facing error; ``str(err)`` is the one line shown to the user."""


class InputError(SegmoteError):
    """A file or argument given by the user cannot be used (missing, unreadable, out of range)."""


class ConfigError(SegmoteError):
    """A model configuration is invalid, or a model is asked for what it was not built for
    (text to an adapter trained without text). Raised by model code, which knows no files and
    no command line."""


class CheckpointError(SegmoteError):
    """A weights or adapter file does not fit the requested model or is not safe to load."""


class ParameterError(InputError):
    """A bad value of a named parameter of a library function.

    The message names parameters as `{name}` placeholders, so each front end shows its own
    spelling: `str(err)` shows the Python names ("box '1,2': expected 4 numbers"), and the CLI,
    which alone knows its flags, calls `render({"box": "--box"})` ("--box '1,2': ...").

    param: the parameter at fault; template: the message, e.g. "{box} '1,2': expected 4 numbers".
    """

    def __init__(self, param: str, template: str) -> None:
        self.param, self.template = param, template
        super().__init__(self.render({}))

    def render(self, names: dict[str, str]) -> str:
        """The message with each `{name}` placeholder spelled by `names` (as written where
        `names` lacks it)."""
        return _PLACEHOLDER.sub(lambda m: names.get(m[1], m[1]), self.template)

    def params(self) -> list[str]:
        """The parameters the message names."""
        return _PLACEHOLDER.findall(self.template)


class CheckpointParameterError(ParameterError, CheckpointError):
    """A weights file that does not fit, named by the parameter that chose it (`{checkpoint}`),
    so the CLI shows its flag and Python callers the parameter name."""


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
