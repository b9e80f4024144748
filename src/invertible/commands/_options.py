"""The CLI's shared flags and argument types, declared once for every sub-command.

**Types** (argparse ``type=`` callables; a bad value is an argparse error, i.e. one line and exit code 2):

* ``positive_int`` / ``nonnegative_int`` / ``positive_float``: counts and sizes that must be ``> 0`` (``>= 0``),
  so ``--batch-size 0`` is refused at the shell instead of being silently replaced by a default;
* ``at_least_two``: a sample size with a standard error; ``threads``: a thread count in ``[1, 1024]``;
* ``seed``: an integer in ``[0, 2**32)`` (numpy refuses negative seeds, deep inside a run);
* ``device``: ``cpu``, ``cuda`` or ``cuda:N`` that this torch build and machine actually have, so ``--device
  cuda`` on a CPU-only build is refused up front instead of failing (or silently running on the CPU) later;
* ``out_dir`` / ``out_file``: a path to write to, refused when it names a file where a folder is expected, a
  folder where a file is expected, or lies below a file;
* ``data_name``: a data-set name or path; a ``.npz`` path that exists must be a zip archive (not truncated);
* ``int_list`` / ``positive_int_list`` / ``float_list`` / ``float_pair``: the ONE list syntax, comma-separated
  (``--hidden 32,64``, ``--blocks 4,4``, ``--radii 1.0,1.3``, ``--budgets 0,0.1,0.2``); empty lists and empty
  items are refused.

**Flags** (``add_*(parser)``): ``--seed``, ``--device``, ``--out``, ``--resume``, ``--progress/--no-progress``,
``--threads``, ``--json``. ``--debug`` belongs to :mod:`invertible.cli` (it is global, not per command).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = [
    "add_device", "add_json", "add_out", "add_progress", "add_resume", "add_seed", "add_threads", "at_least_two",
    "data_name", "data_path", "device", "file_stem", "float_list", "float_pair", "int_list", "nonnegative_int",
    "out_dir", "out_file", "positive_float", "positive_int", "positive_int_list", "seed", "threads",
]


# -- scalar types -------------------------------------------------------------------------------------------------
def _number(text: str, convert: Callable[[str], T], what: str, ok: Callable[[T], bool]) -> T:
    try:
        value = convert(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer ``n >= 1`` (a count: batch size, epochs, steps, folds, samples, ...)."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def nonnegative_int(text: str) -> int:
    """An integer ``n >= 0``."""
    return _number(text, int, "a non-negative integer", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number ``x > 0``."""
    return _number(text, float, "a positive number", lambda v: 0 < v < float("inf"))


def nonnegative_float(text: str) -> float:
    """A finite number ``x >= 0`` (a loss weight)."""
    return _number(text, float, "a finite number >= 0", lambda v: 0 <= v < float("inf"))


def at_least_two(text: str) -> int:
    """An integer ``n >= 2`` (a sample size with a standard error)."""
    return _number(text, int, "an integer >= 2", lambda v: v >= 2)


def threads(text: str) -> int:
    """A thread count in ``[1, 1024]``."""
    return _number(text, int, "a thread count in [1, 1024]", lambda v: 1 <= v <= 1024)


def seed(text: str) -> int:
    """A random seed: an integer in ``[0, 2**32)``."""
    return _number(text, int, "a seed, an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)


def device(text: str) -> str:
    """A torch device this build and machine have: ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    text = text.strip()
    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available in this torch build "
                                             f"({torch.__version__}); use --device cpu")
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


# -- paths --------------------------------------------------------------------------------------------------------
def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (then nothing can be written below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def out_dir(text: str) -> Path:
    """A folder to write into: it may exist (as a folder) or not, but must not be a file or lie below one."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, but {path} is a file")
    above = _file_above(path)
    if above is not None:
        raise argparse.ArgumentTypeError(f"cannot create the folder {path}: {above} is a file, not a folder")
    return path


def out_file(text: str) -> Path:
    """A file to write: it may exist (as a file) or not, but must not be a folder or lie below a file."""
    path = Path(text)
    if path.is_dir() or text.endswith(("/", "\\")):
        raise argparse.ArgumentTypeError(f"expected a file name, but {path} is a folder")
    above = _file_above(path)
    if above is not None:
        raise argparse.ArgumentTypeError(f"cannot write {path}: {above} is a file, not a folder")
    return path


def file_stem(text: str) -> str:
    """A bare file name (no folder, not hidden): what is written stays inside ``--out``."""
    if not text.strip() or text != Path(text).name or text.startswith(".") or "\\" in text:
        raise argparse.ArgumentTypeError(f"expected a plain file name without folders (e.g. 'synthetic'), got {text!r}")
    return text


def data_name(text: str) -> str:
    """A data-set name or path; an existing ``.npz`` must be a zip archive
    (:func:`invertible.data.images.require_npz_archive`), refused here before anything is loaded."""
    from invertible.data.images import require_npz_archive

    path = Path(text)
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            require_npz_archive(path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def data_path(text: str) -> Path:
    """:func:`data_name` for options that take a path only."""
    return Path(data_name(text))


# -- list types ---------------------------------------------------------------------------------------------------
def list_type(convert: Callable[[str], T], what: str, *, length: int | None = None) -> Callable[[str], list[T]]:
    """An argparse type for comma-separated values: ``"a,b,c" -> [convert(a), convert(b), convert(c)]``.

    ``what`` names the items in the error ("integers", "positive integers", ...); ``length`` fixes the number
    of items. Whitespace around items is ignored; an empty list or an empty item is an error.
    """

    def parse(text: str) -> list[T]:
        items = [t.strip() for t in text.split(",")]
        count = "" if length is None else f"{length} "
        error = argparse.ArgumentTypeError(f"expected {count}comma-separated {what}, got {text!r}")
        if not text.strip() or any(not t for t in items) or (length is not None and len(items) != length):
            raise error
        try:
            return [convert(t) for t in items]
        except (ValueError, argparse.ArgumentTypeError):
            raise error from None

    parse.__name__ = f"list of {what}"  # argparse names the type in some messages
    return parse


int_list = list_type(int, "integers")
positive_int_list = list_type(positive_int, "positive integers")
float_list = list_type(float, "numbers")
float_pair = list_type(float, "numbers", length=2)


# -- shared flags -------------------------------------------------------------------------------------------------
def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=seed, default=default, help=f"random seed (default {default})")


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", type=device, default=default,
                   help=f"torch device: cpu, cuda or cuda:N (default {default})")


def add_out(p: argparse.ArgumentParser, *, required: bool = False, default: Path | None = None,
            help: str = "run folder") -> None:
    p.add_argument("--out", type=out_dir, required=required, default=default, help=help)


def add_resume(p: argparse.ArgumentParser, help: str = "continue the run in --out from its checkpoint") -> None:
    p.add_argument("--resume", action="store_true", help=help)


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--progress`` (default) / ``--no-progress``; the value is ``args.no_progress``."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="no_progress", action="store_false", help="show progress bars (default)")
    g.add_argument("--no-progress", dest="no_progress", action="store_true", help="hide progress bars")
    p.set_defaults(no_progress=False)


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=threads, default=None, help="torch CPU threads (torch.set_num_threads)")


def add_json(p: argparse.ArgumentParser, help: str = "also write the result as JSON to this file") -> None:
    p.add_argument("--json", type=out_file, default=None, help=help)
