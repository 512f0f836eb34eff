"""The harness's exceptions: one-line, user-facing reasons a step could not run."""
from __future__ import annotations


class HarnessError(Exception):
    """A one-line, user-facing reason a step could not run."""


class ServerStartError(HarnessError):
    """The server exited or stayed silent instead of printing its ready line."""


class MismatchError(HarnessError):
    """upcase-load saw a reply that is not uppercase(request): a bug, never retried."""


# upcase-load's exit status when a reply differed from uppercase(request).
LOAD_EXIT_MISMATCH = 3


class ToolExit(Exception):
    """Stops a tool: its entry point prints `message` as one line on stderr (prefixed with the
    tool's name) and exits with `status`."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status
