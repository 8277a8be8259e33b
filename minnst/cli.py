"""What every minnst command-line tool shares: exit codes, one-line errors, argument types.

    def main(argv=None):
        return run(_main, argv, prog="stylize")

* 0 success; 2 bad input or usage (one clear line on stderr, no traceback);
  1 an unexpected internal error (the traceback is shown: it is a bug to report);
  130 interrupted by Ctrl-C (the tool saves what it has before re-raising).
* ``UsageError`` is for a tool's own checks of its arguments; ``errors.ConfigError`` (a
  library setting) is reported with the setting's ``--flag``; ``ImageError``,
  ``WeightsError``, ``ModelFileError``, ``DeviceError`` and ``OutputPathError`` are bad
  input too, and so is an ``OSError`` about a file (no space left, permission denied, …).
* ``whole`` and ``number`` are argparse ``type=`` converters with a range, so that a bad
  number is refused while the arguments are parsed, before any work starts.
"""
from __future__ import annotations

import argparse
import errno
import math
import sys

from .errors import ClusterError, ConfigError, WorkerDied

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# OSErrors that say something about the user's files or machine, not about minnst's code
_FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST, errno.EFBIG}


class UsageError(ValueError):
    """Bad arguments or input detected by a tool; reported as one line, exit code 2."""


def _user_errors():
    from .backend import DeviceError
    from .files import OutputPathError
    from .images import ImageError
    from .modelfile import ModelFileError
    from .video import VideoError
    from .weights import WeightsError

    return (UsageError, ImageError, WeightsError, ModelFileError, DeviceError, OutputPathError, VideoError,
            ClusterError, WorkerDied)


def one_line(text) -> str:
    """``text`` on one line: its lines joined by spaces (a path may hold a newline)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error(message: str, prog: str = "minnst") -> int:
    """Print ``prog: error: message`` (one line) on stderr; returns the exit code 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def run(fn, argv=None, prog: str = "minnst") -> int:
    """Call ``fn(argv)`` and turn its outcome into an exit code (see the module doc)."""
    try:
        result = fn(argv)
        return EXIT_OK if result is None else int(result)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, its line printed)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as e:  # a library setting: named by the tool's flag
        return error(e.cli_message(), prog)
    except _user_errors() as e:
        return error(one_line(e) or e.__class__.__name__, prog)
    except MemoryError:
        return error("out of memory: try a smaller image size (or batch size)", prog)
    except OSError as e:
        if e.errno not in _FILE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        return error(f"{where}{e.strerror or e}", prog)


def vgg_min_side(layers) -> int:
    """The shortest image side from which VGG16 reaches every one of ``layers``: each 2×2
    pooling halves a side (floored), so a pooling layer needs a side of at least 2^(its
    number); ``images.MIN_SIZE`` otherwise. (pool5: 32 px; everything else: 16 px.)"""
    from .images import MIN_SIZE
    from .vgg import LAYER_NAMES

    deepest = max((LAYER_NAMES.index(l) for l in layers), default=0)
    pools = sum(1 for name in LAYER_NAMES[:deepest + 1] if name.startswith("pool"))
    return max(MIN_SIZE, 2 ** pools)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits with 2 and one line (argparse's own usage errors do already;
    this keeps the message to the one line without the usage dump)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def _range_words(lo, hi, lo_open=False) -> str:
    def text(v):
        return str(v) if isinstance(v, int) else f"{v:g}"

    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{text(lo)}, {text(hi)}]"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {text(lo)}"
    return f"≤ {text(hi)}" if hi is not None else ""


def whole(lo: int | None = None, hi: int | None = None):
    """An argparse ``type``: a whole number in [lo, hi] (either bound may be None)."""

    def convert(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a whole number {_range_words(lo, hi)}, got {v}")
        return v

    return convert


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse ``type``: a finite number in [lo, hi] (or (lo, hi] with ``lo_open``)."""

    def convert(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a number {_range_words(lo, hi, lo_open)}, got {v:g}")
        return v

    return convert


def add_cluster_arguments(parser, skip_existing: bool = True):
    """The cluster options of a tool (``distributed.cluster`` takes them): ``--workers N``,
    ``--scheduler ADDRESS`` and, with ``skip_existing``, ``--skip-existing``. Returns the
    argument group."""
    g = parser.add_argument_group("cluster (Dask; pip install 'minnst[distributed]'; docs/distributed.md)")
    g.add_argument("--workers", type=whole(1, 1024), default=None, metavar="N",
                   help="run the pieces on a Dask LocalCluster of N worker processes on this machine")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run the pieces on a running Dask cluster, e.g. tcp://10.0.0.5:8786 "
                        "(docs/distributed.md)")
    if skip_existing:
        g.add_argument("--skip-existing", action="store_true",
                       help="leave outputs that already exist as they are (to finish an interrupted job)")
    return g


def cluster_requested(args) -> bool:
    """Whether the parsed arguments ask for a cluster."""
    return getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None
