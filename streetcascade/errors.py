"""The one exception tree. The CLI maps it to exit codes, the miner to HTTP statuses.

Every error carries a one-line, human-readable message naming the problem (a file, a
field path, an expected vs. found value); callers never need to parse tracebacks.
"""

from __future__ import annotations


class StreetcascadeError(Exception):
    """Base of every error we raise on purpose."""

    exit_code = 1
    http_status = 500


class ConfigError(StreetcascadeError):
    """A config file is missing, unparsable or has a bad/unknown field."""

    exit_code = 2
    http_status = 500


class BadInput(StreetcascadeError):
    """An input (image, payload, argument) cannot be used."""

    exit_code = 3
    http_status = 400


class ImageTooLarge(BadInput):
    """Compressed bytes or decoded pixels over the configured limit."""

    http_status = 413


class CompileError(StreetcascadeError):
    """A checkpoint could not be loaded, exported or built."""

    exit_code = 4


class ParityError(CompileError):
    """An exported graph disagrees with the PyTorch reference beyond tolerance."""


class EngineMismatch(StreetcascadeError):
    """An engine set does not match this machine, library versions or its own hashes."""

    exit_code = 5


class ArtifactTampered(EngineMismatch):
    """A file packed into a one-file artifact no longer has the hash recorded when it was packed."""


class BudgetExceeded(StreetcascadeError):
    """The engine set does not fit in the configured memory budget."""

    exit_code = 6


class BackendUnavailable(StreetcascadeError):
    """A backend's library or device is not present here (e.g. TensorRT without a GPU)."""

    exit_code = 7


class DeadlineExceeded(StreetcascadeError):
    """No stage could answer within the deadline."""

    exit_code = 8
    http_status = 503


class Overloaded(StreetcascadeError):
    """Too many requests in flight to serve within their deadlines."""

    exit_code = 9
    http_status = 503


class InferenceError(StreetcascadeError):
    """A backend failed or produced a non-finite result, and no earlier stage had an answer."""

    exit_code = 10
    http_status = 500


def run_command(func, args) -> int:
    """Run a CLI subcommand: our errors become one line on stderr and their exit code, Ctrl-C
    exit 130, never a traceback (shared by the `streetcascade` CLI and the one-file artifact's
    entry point, which must not import the CLI's compile-side modules)."""
    import sys

    try:
        return int(func(args) or 0)
    except StreetcascadeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
