"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input or environment: the message names the problem and the fix."""

    exit_code = 2


def report_error(exc: UserError, prog: str, debug: bool = False) -> int:
    """Print `exc` as the one line "<prog>: error: ..." on stderr and return its exit code; with `debug`,
    raise it instead (the full traceback)."""
    if debug:
        raise exc
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return exc.exit_code
