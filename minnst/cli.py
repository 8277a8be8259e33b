"""What every minnst command-line tool shares: exit codes and one-line errors.

    def main(argv=None):
        return run(_main, argv)

* 0 success; 2 bad input or usage (one clear line on stderr, no traceback);
  1 an unexpected internal error (the traceback is shown: it is a bug to report);
  130 interrupted by Ctrl-C (the tool saves what it has before re-raising).
* ``UsageError`` is for a tool's own checks of its arguments; ``errors.ConfigError`` (a
  library setting) is reported with the setting's ``--flag``; ``ImageError``,
  ``WeightsError``, ``ModelFileError`` and ``DeviceError`` are bad input too.
"""
from __future__ import annotations

import argparse
import sys

from .errors import ConfigError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad arguments or input detected by a tool; reported as one line, exit code 2."""


def _user_errors():
    from .backend import DeviceError
    from .files import OutputPathError
    from .images import ImageError
    from .modelfile import ModelFileError
    from .weights import WeightsError

    return (UsageError, ImageError, WeightsError, ModelFileError, DeviceError, OutputPathError)


def error(message: str, prog: str = "minnst") -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(fn, argv=None, prog: str = "minnst") -> int:
    """Call ``fn(argv)`` and turn its outcome into an exit code (see the module doc)."""
    try:
        result = fn(argv)
        return EXIT_OK if result is None else int(result)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as e:  # a library setting: named by the tool's flag
        return error(e.cli_message(), prog)
    except _user_errors() as e:
        return error(str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__, prog)
    except MemoryError:
        return error("out of memory: try a smaller --size (or --scales for large outputs)", prog)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits with 2 and one line (argparse's own usage errors do already;
    this keeps the message to the one line without the usage dump)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")
