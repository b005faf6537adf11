"""The ``fastmde`` command (also ``python -m fastmde``).

Each sub-command lives in its own module that defines ``add_arguments(parser)`` and
``run(args) -> int``; ``COMMANDS`` maps names to those modules. ``main`` imports only the
module of the command being run (so ``fastmde info`` does not load the training engine);
``fastmde --help`` lists every command from ``COMMANDS`` without importing any.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "info": ("fastmde.info", "versions, devices, and which kernel serves each hot path"),
    "train": ("fastmde.engine.train", "train a depth model (resumable; DDP under torchrun)"),
    "eval": ("fastmde.engine.evaluate", "the nine metrics of a checkpoint under a named protocol"),
    "predict": ("fastmde.engine.predict", "depth maps (.png, .npy) for image files"),
    "sweep": ("fastmde.engine.sweep", "train a list of configurations and tabulate them"),
    "synth": ("fastmde.data.synth_cli", "render the synthetic NYU-like dataset into an NYU file layout"),
    "export": ("fastmde.export", "a checkpoint as ONNX or a torch.export program (.pt2), verified against the model"),
}


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line (``fastmde train: error: ... (--help: the
    options)``) instead of the whole usage before them."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help: the options)\n")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The ``fastmde`` parser; the options of ``commands`` (names; None = all) are filled in.

    Every command is listed (``fastmde --help`` shows them all), but only the modules of
    ``commands`` are imported to add their options and ``run``.
    """
    wanted = set(COMMANDS) if commands is None else set(commands)
    parser = _Parser(prog="fastmde", description="Fast monocular depth estimation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name in wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(_run=module.run)
    parser.command_parsers = sub.choices   # name -> the command's parser (for its errors)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first argument that is not an option (the top level takes only -h).
    name = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([name] if name in COMMANDS else [])
    args, extra = parser.parse_known_args(argv)
    if extra:   # reported by the command's own parser, so the hint names its --help
        (parser.command_parsers.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


# What a user's input can get wrong (bad option values, files that are missing, unreadable, or
# already there): the console prints the message, not a traceback. Anything else is a bug and
# keeps its traceback, as does every error with FASTMDE_DEBUG=1.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError)


def console_main(argv: list[str] | None = None) -> int:
    """The ``fastmde`` command: :func:`main`, with user errors as one line on stderr, exit status 2,
    and Ctrl-C as one line, exit status 130 (no traceback)."""
    try:
        return main(argv)
    except USER_ERRORS as exc:
        if os.environ.get("FASTMDE_DEBUG") == "1":
            raise
        print(f"fastmde: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: what was interrupted has already said what it kept (train and sweep name the
        # checkpoint to resume); the shell convention for SIGINT is status 130.
        if os.environ.get("FASTMDE_DEBUG") == "1":
            raise
        print("fastmde: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(console_main())
