"""The ``invertible`` command. Thin: parses options and calls the library.

Each sub-command lives in ``invertible/commands/<name>.py`` with ``add_parser(subparsers)`` that registers
itself and sets ``func(args) -> int``; the flags they share are declared once in
``invertible/commands/_options.py``. Add a module to :data:`COMMAND_MODULES` to add a command.

Every user error, from argparse (a bad option value) or from the library (``ValueError``,
``FileNotFoundError``, ``FloatingPointError``) or the operating system (``OSError``: permission denied, a
folder where a file should be, a full disk), is one line on stderr and exit code 2; ``--debug`` shows the
traceback instead. Any other exception (a ``RuntimeError`` or ``TypeError`` from deep inside torch) is a bug,
not a user error: it stays a traceback, so that it is reported rather than hidden. Validation that torch does
with ``RuntimeError`` (device strings, state-dict shapes) is turned into ``ValueError`` where it happens.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from invertible.training.denormal import flush_denormals

COMMAND_MODULES: tuple[str, ...] = ("invertible.commands.reproduce", "invertible.commands.analyze_relu",
                                   "invertible.commands.classify", "invertible.commands.ims",
                                   "invertible.commands.invariance", "invertible.commands.flow",
                                   "invertible.commands.hybrid", "invertible.commands.conditional")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (and, by inheritance, every sub-parser) whose usage errors are a single line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="invertible",
        description="Invertible neural networks: i-ResNets, residual flows, invertibility analysis, "
        "excessive invariance and IMS tumour typing (reproductions of Behrmann's thesis).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    parser.command_names = list(sub.choices)  # for the "name a command" error
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        commands = ", ".join(parser.command_names)
        print(f"invertible: error: name a command: {commands} (see `invertible --help`)", file=sys.stderr)
        return 2
    try:
        with flush_denormals():  # subnormals from exp() in ELU/LipSwish slowed CPU training up to 8x
            return int(args.func(args) or 0)
    except (ValueError, OSError, FloatingPointError) as exc:  # user errors: one line, no traceback
        if args.debug:
            raise
        command = " ".join(c for c in (args.command, getattr(args, "ims_command", None)) if c)
        print(f"invertible {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if args.debug or not _is_out_of_memory(exc):  # other RuntimeErrors are bugs: keep their traceback
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"invertible {args.command}: error: not enough memory for these settings ({first[:200]}); "
              "choose smaller sizes", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {_checkpoint_state(args)}", file=sys.stderr)
        return 130


def _is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation (host ``MemoryError``, torch's CPU allocator or CUDA out-of-memory)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; an ``OSError`` as ``what: path`` (its ``str`` starts with ``[Errno]``)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        text = f"cannot use {where}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _checkpoint_state(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind, truthfully."""
    from invertible.io import CHECKPOINT_NAME

    out = getattr(args, "out", None)
    if out is None:
        return "nothing was saved"
    ckpt = Path(out) / CHECKPOINT_NAME
    if ckpt.is_file():
        return f"the last checkpoint {ckpt} is intact: rerun the same command with --resume to continue"
    return f"no checkpoint had been written yet in {out}; rerun the command to start again"


if __name__ == "__main__":
    sys.exit(main())
