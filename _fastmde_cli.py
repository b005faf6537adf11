"""The ``fastmde`` console script's entry point (``setup.py``: ``fastmde = _fastmde_cli:console_main``).

It lives outside the ``fastmde`` package on purpose: importing anything inside ``fastmde`` runs
``fastmde/__init__.py``, which imports torch (seconds), and a Ctrl-C during that import would
reach Python's default handler as a traceback before :func:`fastmde.cli.console_main` could turn
it into one line. This module imports only the standard library, so the import of fastmde
happens inside the ``try`` below: Ctrl-C at any moment of a command is ``fastmde: interrupted``,
exit status 130 (``FASTMDE_DEBUG=1``: the traceback).
"""
from __future__ import annotations

import os
import signal
import sys


def console_main(argv: list[str] | None = None) -> int:
    """``fastmde.cli.console_main`` (user errors: one line, exit 2), with a Ctrl-C while fastmde and
    torch are being imported as one line and exit status 130 too."""
    # SIGINT is held back while fastmde, torch and numpy are imported: a KeyboardInterrupt raised
    # inside numpy's or torch's own import can be caught there and leave a half-imported module
    # (seen as "module 'numpy' has no attribute ..." later, or the Ctrl-C lost). Unblocked after
    # the import, a Ctrl-C pressed meanwhile is delivered at once, inside this try.
    hold = hasattr(signal, "pthread_sigmask")
    try:
        if hold:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from fastmde.cli import console_main as run
        finally:
            if hold:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    except KeyboardInterrupt:
        if os.environ.get("FASTMDE_DEBUG") == "1":
            raise
        print("fastmde: interrupted", file=sys.stderr)
        return 130
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(console_main())
