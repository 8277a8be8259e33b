"""Gatys batches and sweeps: every content × style pair, times each swept setting, as
runs of their own — serially in this process or as tasks on a Dask cluster.

    runs = plan_runs(["a/tubingen.jpg"], ["starry_night.jpg", "wave.png"],
                     {"style_weight": [1e4, 1e5]})
    runs[1].name            # "tubingen__starry_night__style-weight=100000"
    for i, ok, out in distributed.run_ordered(cluster_or_none, run_task, tasks):
        ...                 # the client writes out.image and out.history (gatys.cli)

Output names (``plan_runs``, ``Run.name``): ``<content>__<style>`` then ``__<setting>=<value>``
for each swept setting, in ``SWEEPABLE`` order; labels are file stems made filesystem-safe,
and stems that clash get their folders and then their suffix (``unique_labels``).

One run is one task: a ``RunTask`` carries the run's ``GatysConfig``, the input files' bytes
(no shared file system is assumed) and the output's metadata; ``run_task`` decodes them,
runs ``gatys.stylize`` with VGG16 loaded once per process (``distributed.worker_vgg16``)
and returns a ``RunOutput``: the encoded image, the very bytes a single run writes, and the
loss log, which the client writes (``gatys.cli``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import images
from ..backend import select_device
from ..contact_sheet import Cell
from ..distributed import worker_vgg16
from .config import GatysConfig
from .run import NonFiniteLossError, StylizeResult, stylize

SWEEPABLE = ("style_weight", "content_weight", "tv_weight", "style_scale", "seed")  # GatysConfig fields
SEP = "__"  # between the parts of an output name (stems often hold single underscores)
SHEET_NAME = "contact_sheet.jpg"


# --------------------------------------------------------------------------------------
# Names and plans (pure)
# --------------------------------------------------------------------------------------


def format_value(v) -> str:
    """A swept value as it appears in a name: ``%g`` when that reads back as the same
    number (1e4 -> "10000", 3e6 -> "3e+06", 0.5 -> "0.5"), else ``repr`` (exact)."""
    if isinstance(v, int):
        return str(v)
    short = f"{v:g}"
    return short if float(short) == v else repr(float(v))


def safe_name(text: str) -> str:
    """``text`` as a portable file-name part: letters, digits and ``_ . + = -`` kept, any
    other run of characters one ``_``; no leading dot; never empty."""
    name = re.sub(r"[^\w.+=-]+", "_", text)
    name = "_" + name[1:] if name.startswith(".") else name
    return name or "_"


def _clashes(labels) -> list[list[int]]:
    """Index groups of labels equal up to case (case-insensitive file systems)."""
    groups: dict = {}
    for i, label in enumerate(labels):
        groups.setdefault(label.casefold(), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def unique_labels(paths) -> list[str]:
    """One distinct, filesystem-safe label per path (deterministic, in the paths' order):
    the stem; where stems clash, the path from the clashing files' common folder
    (``a/photo.jpg``, ``b/photo.jpg`` -> ``a-photo``, ``b-photo``); where that still
    clashes, its suffix too (``photo-jpg``, ``photo-png``); then ``~2``, ``~3``, … in order."""
    paths = [Path(os.path.abspath(p)) for p in paths]
    labels = [safe_name(p.stem) for p in paths]
    for keep_suffix in (False, True):
        for group in _clashes(labels):
            common = Path(os.path.commonpath([paths[i].parent for i in group]))
            for i in group:
                rel = paths[i].relative_to(common)
                parts = [*rel.parent.parts, rel.stem] + ([rel.suffix[1:]] if keep_suffix and rel.suffix else [])
                labels[i] = safe_name("-".join(parts))
    for group in _clashes(labels):
        for n, i in enumerate(group[1:], start=2):
            labels[i] = f"{labels[i]}~{n}"
    return labels


def sweep_combinations(sweeps: dict) -> list[tuple]:
    """``{field: [values]}`` -> every combination as ``((field, value), …)``, fields in
    ``SWEEPABLE`` order, the last field varying fastest; ``[()]`` without sweeps."""
    fields = [f for f in SWEEPABLE if f in sweeps]
    return [tuple(zip(fields, values)) for values in itertools.product(*(sweeps[f] for f in fields))]


def setting_text(settings) -> str:
    """``(("style_weight", 1e4), ("seed", 1))`` -> ``"style-weight=10000 seed=1"``."""
    return " ".join(f"{f.replace('_', '-')}={format_value(v)}" for f, v in settings)


@dataclass(frozen=True)
class Run:
    """One run of a batch: a content file, a style file and its swept settings."""

    content: str            # paths as given (a folder's files as listed)
    style: str
    content_label: str      # unique among the batch's contents (``unique_labels``)
    style_label: str
    settings: tuple = ()    # ((GatysConfig field, value), …) of the swept settings
    row: int = 0            # index of the content, of the style, of the settings combination
    style_index: int = 0
    combination: int = 0

    @property
    def name(self) -> str:
        """The output's file name without suffix: ``<content>__<style>[__<setting>=<value>…]``."""
        parts = [self.content_label, self.style_label]
        parts += [f"{f.replace('_', '-')}={format_value(v)}" for f, v in self.settings]
        return SEP.join(parts)


def plan_runs(contents, styles, sweeps: dict | None = None) -> list[Run]:
    """Every content × style × combination of ``sweeps`` (``{GatysConfig field: [values]}``),
    contents slowest, combinations fastest. Inputs given twice (the same absolute path)
    and values given twice count once."""
    contents, styles = _distinct_paths(contents), _distinct_paths(styles)
    sweeps = {f: list(dict.fromkeys(v)) for f, v in (sweeps or {}).items()}
    combinations = sweep_combinations(sweeps)
    c_labels, s_labels = unique_labels(contents), unique_labels(styles)
    return [Run(str(c), str(s), c_labels[i], s_labels[j], combo, i, j, k)
            for i, c in enumerate(contents) for j, s in enumerate(styles)
            for k, combo in enumerate(combinations)]


def _distinct_paths(paths) -> list:
    """``paths`` without repeats of the same absolute path (the first one kept)."""
    seen: dict = {}
    for p in paths:
        seen.setdefault(os.path.abspath(p), p)
    return list(seen.values())


def with_settings(cfg: GatysConfig, run: Run, output) -> GatysConfig:
    """``cfg`` for ``run``: its content and style paths, its swept settings, its output."""
    return dataclasses.replace(cfg, content=run.content, style=[run.style], output=str(output),
                               **dict(run.settings))


def companion_paths(image) -> dict:
    """An output image and the files that go next to it: the loss log
    ``<stem>.losses.jsonl`` and the loss curve ``<stem>.losses.png``."""
    image = Path(image)
    stem = image.with_suffix("")
    return {"image": image, "log": Path(f"{stem}.losses.jsonl"), "curve": Path(f"{stem}.losses.png")}


# --------------------------------------------------------------------------------------
# What an output records
# --------------------------------------------------------------------------------------


def output_metadata(cfg: GatysConfig, content_path, content_sha256: str, style_meta: list) -> dict:
    """The metadata of an output image before the run (``images.save_image`` stores it):
    the seed, the configuration and the inputs with their sha256. ``style_meta``: one
    dict per style image (``{"path", "sha256"}`` or how a procedural one was made)."""
    config = cfg.to_json()
    config["content"] = str(content_path)
    inputs = {"content": {"path": str(content_path), "sha256": content_sha256}, "styles": style_meta}
    return {"Software": "minnst.gatys", "minnst-seed": str(cfg.seed),
            "minnst-config": json.dumps(config, sort_keys=True),
            "minnst-inputs": json.dumps(inputs, sort_keys=True)}


def result_metadata(metadata: dict, result: StylizeResult) -> dict:
    """``metadata`` with the run's outcome added (loss, iterations, why it stopped)."""
    outcome = {"loss": result.loss, "iterations": result.iterations, "stop_reason": result.stop_reason}
    return dict(metadata, **{"minnst-result": json.dumps(outcome)})


# --------------------------------------------------------------------------------------
# One run as a task
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """An image file travelling with a task: its name (for messages) and its bytes."""

    name: str
    data: bytes

    @classmethod
    def read(cls, path) -> "InputFile":
        """The file undecoded (``images.read_image_bytes``: ``ImageError`` if unreadable)."""
        return cls(str(path), images.read_image_bytes(path))

    def decode(self):
        """``images.load_image`` of these bytes: (H, W, 3) float32 in [0, 1]."""
        return images.decode_image(self.data, name=self.name)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class RunTask:
    """Everything one run needs, self-contained (no shared file system)."""

    cfg: GatysConfig               # this run's settings (its paths only go into the metadata)
    content: InputFile
    style: InputFile
    init_image: InputFile | None
    metadata: dict                 # ``output_metadata`` of the output
    suffix: str = ".png"           # the output's format: ".png" or ".jpg"


@dataclass
class RunOutput:
    """What a run sends back to the client."""

    image: bytes                   # the encoded output, as a single run writes it
    history: list                  # the loss log: one record per iteration


def vgg16_for(pooling: str, device):
    """VGG16 with ``pooling`` on ``device``, loaded once per process."""
    return worker_vgg16(pooling, "float32", device.name)


def run_task(task: RunTask) -> RunOutput:
    """One run, on a Dask worker or in this process: decode the inputs, stylise, encode."""
    cfg = task.cfg
    device = select_device(cfg.device)
    init = task.init_image.decode() if task.init_image is not None else None
    try:
        result = stylize(task.content.decode(), [task.style.decode()], cfg, init_image=init,
                         net=vgg16_for(cfg.pooling, device), device=device)
    except NonFiniteLossError as e:  # the last good image stays here: a batch keeps no partial results
        raise NonFiniteLossError(str(e)) from None
    image = images.encode_image(result.image, task.suffix, result_metadata(task.metadata, result))
    return RunOutput(image, result.history)


# --------------------------------------------------------------------------------------
# The contact sheet's grid
# --------------------------------------------------------------------------------------


def sheet_cells(outputs: dict, thumb: int) -> list[list[Cell]]:
    """A batch's contact sheet as rows of ``Cell``: a header row of the style images (one
    column per style × settings combination), then per content its photo and its results
    (``outputs``: ``{Run: its output image's path}``), each image at most ``thumb`` pixels.
    An image that cannot be read (a failed run) is an empty cell that keeps its label."""
    runs = list(outputs)
    columns = sorted({(r.style_index, r.combination): r for r in runs}.items())
    contents = sorted({r.row: r for r in runs}.items())
    by_place = {(r.row, r.style_index, r.combination): r for r in runs}
    grid = [[Cell(None)] + [Cell(_thumbnail(r.style, thumb), _lines(r.style_label, setting_text(r.settings)))
                            for _, r in columns]]
    for row, first in contents:
        cells = [Cell(_thumbnail(first.content, thumb), first.content_label)]
        for (s, k), _ in columns:
            run = by_place[(row, s, k)]
            label = _lines(f"{run.content_label} / {run.style_label}", setting_text(run.settings))
            cells.append(Cell(_thumbnail(outputs[run], thumb), label))
        grid.append(cells)
    return grid


def _thumbnail(path, size: int):
    try:
        return images.load_image(path, size=size)
    except (images.ImageError, OSError):
        return None


def _lines(*parts) -> str:
    return "\n".join(p for p in parts if p)

