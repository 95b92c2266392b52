"""User-facing errors: one line that names the file and the fix; the CLI prints it and exits 2."""

from __future__ import annotations


class PdsegError(Exception):
    """A mistake the user can fix (bad path, wrong file, bad option).

    Args:
        message: what is wrong, naming the file or value.
        hint: how to fix it, or None.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(PdsegError):
    """An input image, folder or option cannot be used."""


class WeightsError(PdsegError):
    """A checkpoint or exported model file is missing, truncated or of the wrong kind."""


class DataError(PdsegError):
    """A dataset split, GT or prediction folder is missing or malformed."""


class NotAvailableError(PdsegError):
    """A feature needs something that is not installed or not present (e.g. onnxruntime, CUDA)."""


def first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (its type's name if empty), for a one-line error."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")[:160]
