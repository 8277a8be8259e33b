"""Video: stylise a clip with a feed-forward network, without flicker.

    from minnst import video
    stats = video.stylize_video(net, "clip.mp4", "out.mp4", style=None, size=None,
                                stabilize="flow", progress=lambda done, total: ...)

A feed-forward network is not stable under the small changes between frames: its two
stride-2 steps see a shifted photo on a different sampling grid, and the brush strokes it
paints move around from frame to frame (27–31 grey levels of mean change on a pan over a
still photo, after undoing the motion, where the input frames do not change at all).
``stabilize="flow"`` (the default) blends each stylised frame with the previous *output*
carried along the optical flow of the input frames, then gives the blend back the
network's own power spectrum so it stays as sharp (``Stabilizer``; docs/video.md has the
maths and the measurements); ``"none"`` is plain frame by frame.

The pieces, each usable alone:

* ``read_frames(src, size)`` decodes a clip frame by frame (``Frame``: index, timestamp,
  ``(H, W, 3)`` uint8 RGB), ``write_video(dst, frames, src)`` encodes frames in order,
  keeping the source's timestamps and copying its audio; both stream, so memory does not
  grow with the clip's length.
* ``stylize_frames(net, frames, style, stabilize)`` is the per-frame loop (a generator;
  the stabiliser's flow work runs in a second thread during the network's pass);
  ``stylize_video`` = ``write_video(dst, stylize_frames(net, read_frames(src)), src)``.
* Chunks, for a cluster: ``split_frames(frames, length, warmup)`` cuts a stream of frames
  into ``Chunk``s, each led by the ``warmup`` frames before it; ``stylize_chunk_frames(net,
  chunk)`` (on a worker) stylises them all and returns the chunk's own: the stabiliser
  has run over the lead, so the chunk's first frame carries nearly the history it has in
  one sequential pass and the seam does not flicker. The client then calls
  ``write_video(dst, chain(*results), src)``. ``chunk_length`` says how long a chunk is;
  ``stylize_chunk(net, src, start, stop)`` is a chunk decoded from the file.
* ``optical_flow``, ``warp`` (and its naive twin ``warp_naive``), ``consistency_mask``:
  the flow machinery; ``camera_clip``, ``warping_error``, ``sharpness``,
  ``measure_stability``: the measurements of ``python -m minnst.bench video``.

Dependencies, imported only here: PyAV (``av``) for decoding and encoding, OpenCV
(``cv2``) for the optical flow and warping; ``pip install 'minnst[video]'``.

Errors: a file that is not a video, has no video stream or no frames, is truncated or
corrupt, or uses a codec this FFmpeg cannot decode raises ``VideoError`` (a
``ValueError``, one plain line), and no output file is left behind (``files.atomic_write``).
"""
from __future__ import annotations

import functools
import io
import time
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .files import atomic_write
from .parallel import num_workers

STABILIZE = ("flow", "none")
# Frames the stabiliser runs before a chunk's first frame (``stylize_chunk``). Measured
# on a 512-px pan (docs/video.md): the warping error across the seam is 27.6 grey levels
# with none (frame by frame: 31.3), 13.7 with 8, 9.6 with 24, against 7.0 inside a chunk.
WARMUP_FRAMES = 24
# A chunk for a cluster task (``chunk_length``): with the stabiliser, ten times its warm-up
# (240 frames: the warm-up then adds 10 % network passes, and a seam every 8 s at 30 fps);
# frame by frame, 32 frames (a task's overhead, milliseconds, is nothing beside 32
# network passes, and short chunks balance the workers and hold little memory).
CHUNK_WARMUPS = 10
PLAIN_CHUNK_FRAMES = 32

# Output container and video codec by file suffix.
OUTPUT_FORMATS = {
    ".mp4": ("mp4", "libx264"), ".m4v": ("mp4", "libx264"), ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"), ".webm": ("webm", "libvpx-vp9"), ".avi": ("avi", "mpeg4"),
}
# File names a command line treats as clips (FFmpeg reads many more; these are the usual).
INPUT_SUFFIXES = (*OUTPUT_FORMATS, ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".3gp", ".flv",
                  ".wmv", ".ogv")
# Demuxers that open still images: a photo is not a one-frame clip.
IMAGE_DEMUXERS = ("image2", "image2pipe")


class VideoError(ValueError):
    """A clip that cannot be read or written: one plain line naming the file."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV: pip install 'minnst[video]'") from None
    # No log callback at all (PyAV's default; our errors say what went wrong, in one line).
    # Any level installs one that FFmpeg's decoding threads call for their errors, taking
    # the GIL: stopping a decode early then deadlocked now and then (within 35 s of
    # stylize_chunk in a loop here; none in 106 rounds without it).
    av.logging.set_level(None)
    return av


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise VideoError("temporal stabilisation needs OpenCV: pip install 'minnst[video]' "
                         "(or stabilize='none')") from None
    return cv2


# --------------------------------------------------------------------------------------
# Optical flow and warping
# --------------------------------------------------------------------------------------
#
# A flow field of frame t is an (H, W, 2) float32 array ``flow[y, x] = (dx, dy)``: the
# content at pixel (x, y) of frame t was at (x + dx, y + dy) in the other frame. So
# ``warp(other, flow)`` brings the other frame onto frame t (backward warping, no holes).

FLOW_METHODS = ("dis", "dis-fast", "dis-medium", "farneback")


def _grey(img) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 luma (BT.601), what the flow methods read."""
    cv2 = _import_cv2()
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)


def optical_flow(frame, other, method: str = "dis") -> np.ndarray:
    """Dense flow from ``frame`` to ``other`` (both (H, W, 3) uint8 RGB, or (H, W) grey):
    (H, W, 2) float32 with ``frame(p) ≈ other(p + flow(p))``.

    ``"dis"``: OpenCV's DIS flow (Kroeger et al. 2016: patch matching by inverse search on
    a pyramid, then variational refinement) with the FAST preset's patches and
    iterations, refined down to half resolution (the MEDIUM preset's finest scale), which
    is as accurate as MEDIUM at 3/4 of its time; ``"dis-fast"``: the FAST preset
    (quarter resolution: 3× faster, 3× the error); ``"dis-medium"``: the MEDIUM preset;
    ``"farneback"``: OpenCV's Farnebäck (2003) polynomial expansion (pyramid 0.5 × 3
    levels, window 15, 3 iterations). docs/video.md compares them."""
    cv2 = _import_cv2()
    a = frame if np.ndim(frame) == 2 else _grey(frame)
    b = other if np.ndim(other) == 2 else _grey(other)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    presets = {"dis": cv2.DISOPTICAL_FLOW_PRESET_FAST, "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "dis-medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if method not in presets:
        raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")
    dis = cv2.DISOpticalFlow_create(presets[method])
    if method == "dis":
        dis.setFinestScale(1)
    return dis.calc(a, b, None)


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int):
    """(x, y) coordinates of every pixel, two (H, W) float32 arrays (read-only, cached:
    a clip asks for the same size every frame)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


def _sample_grid(flow):
    xx, yy = _pixel_grid(*flow.shape[:2])
    return xx + flow[..., 0], yy + flow[..., 1]  # (H, W) each: where each pixel samples


def warp(img, flow, interpolation: str = "linear") -> np.ndarray:
    """``img`` (H, W[, C]) sampled at ``p + flow(p)`` for every pixel p: ``(H, W[, C])``
    float32. Samples outside the frame take the nearest border pixel. ``"linear"``
    (bilinear; ``warp_naive`` is its reference) or ``"cubic"`` (bicubic, a = −0.75: less
    blur when a picture is warped again and again, as the stabiliser does)."""
    cv2 = _import_cv2()
    modes = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
    if interpolation not in modes:
        raise ValueError(f"interpolation must be one of {tuple(modes)}, got {interpolation!r}")
    mx, my = _sample_grid(np.asarray(flow, dtype=np.float32))
    src = np.ascontiguousarray(img, dtype=np.float32)
    return cv2.remap(src, mx, my, modes[interpolation], borderMode=cv2.BORDER_REPLICATE)


def warp_naive(img, flow) -> np.ndarray:
    """Bilinear ``warp`` in plain NumPy (float64 weights), the reference ``warp`` is
    tested against: with ``(x0, y0) = ⌊p + flow⌋`` and ``(fx, fy)`` the fractions,
    ``out = (1−fy)[(1−fx) I(y0, x0) + fx I(y0, x0+1)] + fy[(1−fx) I(y0+1, x0) + fx I(y0+1, x0+1)]``
    with indices clamped to the frame."""
    a = np.asarray(img, dtype=np.float64)
    H, W = a.shape[:2]
    f = np.asarray(flow, dtype=np.float64)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    x = np.clip(xx + f[..., 0], 0, W - 1)
    y = np.clip(yy + f[..., 1], 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(int), W - 2) if W > 1 else np.zeros_like(x, int)
    y0 = np.minimum(np.floor(y).astype(int), H - 2) if H > 1 else np.zeros_like(y, int)
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    if a.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    top = (1 - fx) * a[y0, x0] + fx * a[y0, x1]
    bottom = (1 - fx) * a[y1, x0] + fx * a[y1, x1]
    return ((1 - fy) * top + fy * bottom).astype(np.float32)


def inside_mask(flow, margin: float = 0.0) -> np.ndarray:
    """(H, W) bool: ``p + flow(p)`` lies inside the frame (``margin`` px from its edge)."""
    H, W = flow.shape[:2]
    mx, my = _sample_grid(np.asarray(flow, dtype=np.float32))
    return (mx >= margin) & (mx <= W - 1 - margin) & (my >= margin) & (my <= H - 1 - margin)


def consistency_mask(backward, forward) -> np.ndarray:
    """(H, W) bool, True where frame t's pixel is seen in frame t−1 too (not occluded).

    ``backward``: flow t → t−1, ``forward``: flow t−1 → t. A pixel p is kept when the
    round trip returns (Sundaram, Brox & Keutzer 2010; Ruder et al. 2016),
    ``|b(p) + f(p + b(p))|² ≤ 0.01 (|b(p)|² + |f(p + b(p))|²) + 0.5``,
    and ``p + b(p)`` lies inside frame t−1."""
    b = np.asarray(backward, dtype=np.float32)
    fb = warp(forward, b)  # f(p + b(p)): (H, W, 2)
    bx, by, fx, fy = b[..., 0], b[..., 1], fb[..., 0], fb[..., 1]
    round_trip = (bx + fx) ** 2 + (by + fy) ** 2
    ok = round_trip <= 0.01 * (bx * bx + by * by + fx * fx + fy * fy) + 0.5
    return ok & inside_mask(b)


# --------------------------------------------------------------------------------------
# The stabiliser
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def ring_index(height: int, width: int, rings: int) -> np.ndarray:
    """(H, W) int: the ring of each DCT-II coefficient (k, l) of an H × W picture, by its
    spatial frequency ``r = √((k/H)² + (l/W)²) / √2`` ∈ [0, 1) (coefficient (k, l) is the
    cosine of k/(2H), l/(2W) cycles per pixel): ``⌊r · rings⌋``."""
    k = np.arange(height, dtype=np.float64)[:, None] / height
    l = np.arange(width, dtype=np.float64)[None, :] / width
    r = np.sqrt((k * k + l * l) / 2)
    ri = np.minimum((r * rings).astype(np.intp), rings - 1)
    ri.flags.writeable = False  # cached: one array per size
    return ri


def _dct_planes(img) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W) float32 orthonormal DCT-II of each plane (the
    planes spread over the CPU pool's thread count)."""
    from scipy.fft import dctn

    x = np.asarray(img, dtype=np.float32)
    planes = x[None] if x.ndim == 2 else np.ascontiguousarray(np.moveaxis(x, -1, 0))
    return dctn(planes, axes=(-2, -1), norm="ortho", workers=num_workers())


@functools.lru_cache(maxsize=8)
def _ring_matrix(height: int, width: int, rings: int):
    """The (rings, H·W) 0/1 sparse matrix that sums a flattened plane over each ring."""
    from scipy.sparse import csr_matrix

    ri = ring_index(height, width, rings).ravel()
    return csr_matrix((np.ones(ri.size, np.float32), (ri, np.arange(ri.size))), shape=(rings, ri.size))


def _ring_sums(c, rings: int) -> np.ndarray:
    """(C, H, W) DCT coefficients -> (C, rings) float64 summed squares per ring (one
    sparse product for all planes: 4× faster than a ``bincount`` per plane)."""
    sq = (c * c).reshape(c.shape[0], -1)  # (C, H·W)
    return np.asarray((_ring_matrix(*c.shape[1:], rings) @ sq.T).T, dtype=np.float64)


def ring_power(img, rings: int = 48) -> np.ndarray:
    """The radial power spectrum of a picture: the summed squared DCT-II coefficients in
    each frequency ring (``ring_index``); (rings,) for (H, W), (C, rings) for (H, W, C)."""
    p = _ring_sums(_dct_planes(img), rings)
    return p[0] if np.ndim(img) == 2 else p


def equalize_spectrum(img, reference, max_gain: float = 2.0, rings: int = 48) -> np.ndarray:
    """``img`` filtered so that its radial power spectrum is ``reference``'s, plane by plane
    ((H, W) or (H, W, C), the reference of the same shape; float32).

    With ``c = DCT(plane)``, ``P_img``, ``P_ref`` the ring powers (``ring_power``) and
    ``g_j = clip(√(P_ref,j / P_img,j), 1/max_gain, max_gain)`` (``g_0 = 1``: the mean and the
    coarsest shading stay), the plane becomes ``IDCT(c · g_ring(k,l))``. The DCT
    (orthonormal, type II) extends the picture symmetrically at its borders, so unlike an
    FFT the filter does not mix opposite edges; an unclipped gain makes each ring's power
    exactly ``P_ref,j``."""
    from scipy.fft import idctn

    x = np.asarray(img, dtype=np.float32)
    if np.shape(reference) != x.shape:
        raise ValueError(f"equalize_spectrum: shapes differ, {x.shape} and {np.shape(reference)}")
    c = _dct_planes(x)  # (C, H, W)
    g = np.sqrt((_ring_sums(_dct_planes(reference), rings) + 1e-12) / (_ring_sums(c, rings) + 1e-12))
    g = np.clip(g, 1.0 / max_gain, max_gain).astype(np.float32)  # (C, rings)
    g[:, 0] = 1.0
    ri = ring_index(*c.shape[1:], rings)
    out = idctn(c * np.stack([gc[ri] for gc in g]), axes=(-2, -1), norm="ortho", workers=num_workers())
    return (out[0] if x.ndim == 2 else np.moveaxis(out, 0, -1)).astype(np.float32)


@dataclass(frozen=True)
class StabilizerConfig:
    alpha: float = 0.8            # weight of the carried previous output where the flow holds
    flow: str = "dis"             # flow of the input frames: one of FLOW_METHODS
    interpolation: str = "cubic"  # how the previous output is warped: "linear" | "cubic"
    equalize: bool = True         # give the blend the network's power spectrum (sharpness)
    max_gain: float = 2.0         # bound on the equaliser's amplitude gain per ring
    rings: int = 48               # frequency rings of the equaliser
    cut_coverage: float = 0.5     # a scene cut: fewer pixels than this fraction pass the
    cut_residual: float = 20.0    # round trip, or those that do differ by more than this
                                  # (mean grey levels) in the input frames warped together

    def __post_init__(self):
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.flow not in FLOW_METHODS:
            raise ValueError(f"flow must be one of {FLOW_METHODS}, got {self.flow!r}")
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation must be 'linear' or 'cubic', got {self.interpolation!r}")
        if not self.max_gain >= 1 or not (isinstance(self.rings, int) and self.rings >= 2):
            raise ValueError(f"max_gain must be ≥ 1 and rings an int ≥ 2, got {self.max_gain}, {self.rings}")


def _mean_residual(grey, prev_grey, flow, mask) -> float:
    """Mean |grey − warp(prev_grey, flow)| over ``mask``: how well the flow explains the
    input frames. On pans and zooms over six photos at 512 px: 0.8–6.4 grey levels within
    a shot (and 94–100 % of the pixels pass the round trip), 33–71 across a cut between
    two of them (2–6 % pass)."""
    if not mask.any():
        return np.inf
    r = np.abs(grey.astype(np.float32) - warp(prev_grey.astype(np.float32), flow))
    return float(r[mask].mean())


class Carried(NamedTuple):
    """What ``Stabilizer.prepare`` hands to ``finish`` for frame t."""
    grey: np.ndarray            # (H, W) uint8 luma of the input frame
    mask: np.ndarray | None     # (H, W, 1) float32 m, or None: nothing carried (first frame, cut)
    previous: np.ndarray | None  # (H, W, 3) float32 warp(O_{t−1}, b)


class Stabilizer:
    """Temporal blending of stylised frames along the optical flow of the input frames.

    Per frame t, with x_t the input frame, S_t = f(x_t) the network's output and O_{t−1}
    the previous *output* (all (H, W, 3); S and O in [0, 255]):

    1. ``b = flow(x_t → x_{t−1})``, ``f = flow(x_{t−1} → x_t)`` (``optical_flow``) and
       ``m = consistency_mask(b, f)``: 1 where the pixel was visible in frame t−1;
    2. ``P = warp(O_{t−1}, b)``: the previous output carried onto frame t;
    3. ``B = S_t + α m (P − S_t)``: an exponential moving average along the motion, so
       the output's change between frames is ``(1 − α)(S_t − P)`` where the flow holds;
    4. sharpness: the average of brush strokes that do not line up, and the warps that
       carry the average from frame to frame, both flatten the high frequencies (an
       average of two uncorrelated textures has ``α² + (1−α)²`` of their power). So each
       colour plane of the blend gets the network's own radial power spectrum back,
       ``O_t = B + m (equalize_spectrum(B, S_t) − B)``, clipped to [0, 255].

    Where the flow fails (occlusions) m = 0 and O_t = S_t; so for the whole frame at a
    scene cut (``cut_coverage``, ``cut_residual``: the flow explains too little of the
    input). The first frame, and the first after ``reset``, is S_t. The state is the
    previous input frame and output, so a chunk of frames is stabilised by running the
    stabiliser over some frames before it (``stylize_chunk``)."""

    def __init__(self, config: StabilizerConfig | None = None):
        self.config = config or StabilizerConfig()
        _import_cv2()
        self.reset()

    def reset(self):
        self.prev_grey = None
        self.prev_out = None

    def prepare(self, frame) -> Carried:
        """Steps 1–2 for the input ``frame`` ((H, W, 3) uint8): everything that does not
        need the network's output, so it can run while the network stylises the same
        frame (``stylize_frames`` does). Reads the state, changes nothing."""
        c = self.config
        grey = _grey(frame)
        if self.prev_out is None or self.prev_grey.shape != grey.shape:
            return Carried(grey, None, None)
        b = optical_flow(grey, self.prev_grey, c.flow)
        f = optical_flow(self.prev_grey, grey, c.flow)
        m = consistency_mask(b, f)
        if m.mean() < c.cut_coverage or _mean_residual(grey, self.prev_grey, b, m) > c.cut_residual:
            return Carried(grey, None, None)  # a new shot: nothing of the last one belongs here
        return Carried(grey, m.astype(np.float32)[..., None], warp(self.prev_out, b, c.interpolation))

    def finish(self, stylized, carried: Carried) -> np.ndarray:
        """Steps 3–4: the output frame O_t ((H, W, 3) float32 in [0, 255]) from the
        network's output ``stylized`` ((H, W, 3) in [0, 255]) and ``prepare``'s result for
        the same frame; O_t and the frame become the state."""
        c = self.config
        S = np.asarray(stylized, dtype=np.float32)
        m, P = carried.mask, carried.previous
        if P is None or P.shape != S.shape:
            out = S
        else:
            out = S + (c.alpha * m) * (P - S)
            if c.equalize and c.alpha > 0:
                out += m * (equalize_spectrum(out, S, c.max_gain, c.rings) - out)
            out = np.clip(out, 0.0, 255.0)
        self.prev_grey, self.prev_out = carried.grey, out
        return out

    def __call__(self, frame, stylized) -> np.ndarray:
        """``finish(stylized, prepare(frame))``: ``frame`` (H, W, 3) uint8 input,
        ``stylized`` (H, W, 3) float32 network output in [0, 255] -> O_t, the same."""
        return self.finish(stylized, self.prepare(frame))


def make_stabilizer(stabilize) -> Stabilizer | None:
    """``"flow"`` -> a ``Stabilizer`` with the default settings, ``"none"`` -> None; a
    ``StabilizerConfig`` -> a ``Stabilizer`` with it; a ``Stabilizer`` -> itself (its
    state continues)."""
    if isinstance(stabilize, Stabilizer):
        return stabilize
    if isinstance(stabilize, StabilizerConfig):
        return Stabilizer(stabilize)
    if stabilize not in STABILIZE:
        raise ValueError(f"stabilize must be one of {STABILIZE}, got {stabilize!r}")
    return Stabilizer() if stabilize == "flow" else None


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


class Frame(NamedTuple):
    index: int                  # position in the clip, from 0
    pts: int | None             # presentation timestamp in time_base units (None: unknown)
    time_base: Fraction | None
    image: np.ndarray           # (H, W, 3) uint8 RGB


def stylize_frames(net, frames: Iterable[Frame], style=None, stabilize="flow") -> Iterator[Frame]:
    """Stylise frames one at a time, in order (a generator: one frame in, one out).

    Each frame is ``net.stylize(image / 255, style)``, then blended by the stabiliser
    (``stabilize``: as ``make_stabilizer`` takes it). The stabiliser's flow work
    (``Stabilizer.prepare``) runs in a second thread while the network stylises the same
    frame: the network leaves a core idle part of the time (its single-threaded NumPy
    passes), and a GPU network leaves the CPU idle."""
    from concurrent.futures import ThreadPoolExecutor

    from .images import to_uint8

    stab = make_stabilizer(stabilize)
    with ThreadPoolExecutor(1, thread_name_prefix="minnst-flow") as pool:
        for fr in frames:
            carried = pool.submit(stab.prepare, fr.image) if stab is not None else None
            S = net.stylize(fr.image.astype(np.float32) / 255.0, style) * 255.0  # (H, W, 3)
            out = S if stab is None else stab.finish(S, carried.result())
            yield fr._replace(image=to_uint8(out / 255.0))


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` reads from a clip's headers."""
    width: int                # as stored (``read_frames`` applies a display rotation)
    height: int
    rate: Fraction | None     # average frame rate
    frames: int | None        # frame count the container states (None: not stated)
    duration: float | None    # seconds, of the video stream
    codec: str
    audio: str | None         # codec of the first audio stream, if any

    @property
    def total(self) -> int | None:
        """Frames to expect: the stated count, else duration × rate (an estimate)."""
        if self.frames:
            return self.frames
        if self.duration and self.rate:
            return max(1, round(self.duration * float(self.rate)))
        return None


def _open_input(av, src):
    src = Path(src)
    if not src.exists():
        raise VideoError(f"video file not found: {src}")
    if src.is_dir():
        raise VideoError(f"expected a video file, got a folder: {src}")
    try:
        container = av.open(str(src), "r")
    except PermissionError:
        raise VideoError(f"cannot read video file (permission denied): {src}") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        raise VideoError(f"not a video file (or a truncated or corrupt one): {src}") from None
    if container.format.name in IMAGE_DEMUXERS or container.format.name.endswith("_pipe"):
        container.close()
        raise VideoError(f"{src} is a still image, not a video")
    if not container.streams.video:
        container.close()
        raise VideoError(f"{src} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.name:
        container.close()
        raise VideoError(f"{src}: its video codec is not supported by this FFmpeg")
    return container, stream


def probe(src) -> VideoInfo:
    """What ``src`` holds, without decoding it (raises ``VideoError``)."""
    av = _import_av()
    container, stream = _open_input(av, src)
    try:
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return VideoInfo(stream.codec_context.width, stream.codec_context.height,
                         stream.average_rate, stream.frames or None,
                         _stated_duration(stream, container), stream.codec_context.name, audio)
    finally:
        container.close()


def output_shape(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(H', W') of the output: as is, or the longest side ``size`` with each side rounded
    to an even number (4:2:0 video needs even sides)."""
    if size is None:
        return height, width
    scale = size / max(height, width)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def _stated_duration(stream, container) -> float | None:
    """Seconds the container says the video stream lasts: its duration, Matroska's
    DURATION tag, or the file's duration when the video is its only stream; else None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # "HH:MM:SS.nnnnnnnnn"
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (AttributeError, ValueError):
        pass
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1e6  # in av.time_base units: microseconds
    return None


def _check_complete(src, container, stream, packets: int, last_time: float | None):
    """Raise ``VideoError`` if the stream ended before what its container states: fewer
    packets than an MP4/MOV sample table lists (exact), or, elsewhere, a last frame more
    than two frame periods (and 1 %) before the stated duration."""
    if container.format.name.startswith("mov") and stream.frames:
        if packets < stream.frames:
            raise VideoError(f"{src} ends after {packets} of its {stream.frames} frames (truncated or corrupt)")
        return
    end, rate = _stated_duration(stream, container), stream.average_rate
    if end and rate and last_time is not None and last_time + 2 / float(rate) < 0.99 * end:
        raise VideoError(f"{src} ends at {last_time:.2f} s of its {end:.2f} s (truncated or corrupt)")


def read_frames(src, size: int | None = None, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
    """Decode ``src`` frame by frame: ``Frame``s with ``index`` in ``[start, stop)``, images
    (H, W, 3) uint8 RGB at the source size or ``output_shape(H, W, size)``, upright (a
    display rotation in the file is applied to the pixels).

    Frames before ``start`` are decoded but not converted. Raises ``VideoError`` for an
    unreadable file, a clip without frames, a decoding error, or a clip that ends before
    what its container states (truncated)."""
    av = _import_av()
    container, stream = _open_input(av, src)
    stream.thread_type = "AUTO"
    n, packets, shape, last_time = 0, 0, None, None
    try:
        try:
            for packet in container.demux(stream):
                packets += packet.size > 0
                for frame in packet.decode():
                    if stop is not None and n >= stop:
                        return
                    if n >= start:
                        # a phone's clip is stored sideways with a display rotation
                        # (counterclockwise degrees); we write the frames upright instead
                        turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
                        if shape is None:
                            h, w = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
                            shape = output_shape(h, w, size)
                        coded = shape[::-1] if turns % 2 else shape  # (H, W) before turning
                        img = frame.to_ndarray(format="rgb24", width=coded[1], height=coded[0],
                                               interpolation="AREA")
                        if turns:
                            img = np.ascontiguousarray(np.rot90(img, turns))
                        yield Frame(n, frame.pts, frame.time_base, img)
                    last_time = frame.time if frame.time is not None else last_time
                    n += 1
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode {src} after {n} frames (corrupt or unsupported: "
                             f"{_first_line(e)})") from None
        if n == 0:
            raise VideoError(f"{src} has no video frames")
        _check_complete(src, container, stream, packets, last_time)
    finally:
        container.close()


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


def _codec_for(av, dst: Path):
    suffix = dst.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise VideoError(f"cannot write {dst}: use a {', '.join(OUTPUT_FORMATS)} file name")
    fmt, codec = OUTPUT_FORMATS[suffix]
    if codec not in av.codecs_available:
        codec = "mpeg4"  # an FFmpeg build without libx264 / libvpx still has this one
    return fmt, codec


def _add_video_stream(av, out, codec, rate, time_base, height, width):
    stream = out.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    even = height % 2 == 0 and width % 2 == 0
    formats = {f.name for f in (stream.codec.video_formats or ())}
    if even or "yuv444p" not in formats:
        if not even:
            raise VideoError(f"{codec} cannot encode an odd size ({width}x{height}): "
                             f"write .mp4 or .mkv, or choose a size")
        stream.pix_fmt = "yuv420p"
    else:
        stream.pix_fmt = "yuv444p"  # keeps an odd size exactly (4:2:0 needs even sides)
    if time_base is not None:
        stream.codec_context.time_base = time_base
    if codec == "libx264":
        stream.options = {"crf": "18", "preset": "medium"}
    elif codec == "libvpx-vp9":
        stream.options = {"crf": "30", "b": "0", "row-mt": "1"}
    else:  # ~0.2 bits per pixel: near-transparent MPEG-4 part 2
        stream.bit_rate = int(0.2 * width * height * float(rate or 30))
    return stream


def _can_copy(av, fmt: str, stream) -> bool:
    """Whether container format ``fmt`` takes ``stream``'s packets as they are: a header
    written into memory says it (the muxers' own rules, e.g. Opus in MP4 but not MOV)."""
    try:
        with av.open(io.BytesIO(), "w", format=fmt) as trial:
            trial.add_stream_from_template(stream)
            trial.start_encoding()
        return True
    except (av.FFmpegError, ValueError):
        return False


class _AudioCopy:
    """The source's first audio stream, copied packet by packet into ``out`` (re-encoded
    to the container's default codec only when the container cannot hold it), muxed up
    to each video frame's time so the output stays interleaved."""

    def __init__(self, av, out, fmt, src):
        self.out = out
        self.container = av.open(str(src), "r")
        self.inp = self.container.streams.audio[0]
        name = self.inp.codec_context.name
        if _can_copy(av, fmt, self.inp):
            self.stream, self.mode = out.add_stream_from_template(self.inp), "copied"
        else:
            codec = out.default_audio_codec
            self.stream = out.add_stream(codec, rate=self.inp.codec_context.sample_rate)
            self.mode = f"re-encoded ({name} -> {codec})"
        self.packets = self.container.demux(self.inp)
        self.pending = None

    def mux_until(self, seconds: float | None):
        """Mux the audio up to ``seconds`` (None: all of it)."""
        while True:
            pkt = self.pending or next(self.packets, None)
            self.pending = None
            if pkt is None:
                return
            if pkt.dts is None:  # the demuxer's end-of-stream marker
                continue
            if seconds is not None and pkt.pts is not None and float(pkt.pts * pkt.time_base) > seconds:
                self.pending = pkt
                return
            if self.mode == "copied":
                pkt.stream = self.stream
                self.out.mux(pkt)
            else:
                for frame in pkt.decode():
                    frame.pts = None
                    self.out.mux(self.stream.encode(frame))

    def finish(self):
        self.mux_until(None)
        if self.mode != "copied":
            self.out.mux(self.stream.encode(None))

    def close(self):
        self.container.close()


def write_video(dst, frames: Iterable[Frame], src=None, progress: Callable | None = None,
                total: int | None = None, rate: Fraction | None = None) -> dict:
    """Encode ``frames`` (in order; all of one size) into ``dst``, atomically.

    The container and codec follow ``dst``'s suffix (``OUTPUT_FORMATS``: H.264 in .mp4,
    .mov, .mkv; VP9 in .webm; MPEG-4 in .avi). Each frame keeps its timestamp (so the
    frame rate, a variable one included, and the sync with the audio are the source's);
    ``rate`` defaults to ``src``'s. With ``src``, its first audio stream is copied.
    ``progress(done, total)`` is called after each frame. Returns ``{"frames", "width",
    "height", "fps", "audio", "seconds"}``; on any error no ``dst`` is written."""
    av = _import_av()
    dst = Path(dst)
    fmt, codec = _codec_for(av, dst)
    info = probe(src) if src is not None else None
    rate = rate or (info.rate if info else None) or Fraction(30)
    t0, n, shape, audio_mode = time.perf_counter(), 0, None, None
    with atomic_write(dst) as tmp:
        # bitexact: no random segment id or date (Matroska, WebM): the same frames, the same bytes
        out = av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"})
        audio = None
        try:
            stream, last_pts = None, None
            for fr in frames:
                img = np.ascontiguousarray(fr.image, dtype=np.uint8)
                if stream is None:
                    shape = img.shape[:2]
                    # AVI counts frames in ticks of 1/rate; the others keep the source's clock
                    keep = fmt != "avi" and fr.pts is not None and fr.time_base is not None
                    tb = fr.time_base if keep else Fraction(1) / rate
                    stream = _add_video_stream(av, out, codec, rate, tb, *shape)
                    if info is not None and info.audio:
                        audio = _AudioCopy(av, out, fmt, src)
                        audio_mode = audio.mode
                elif img.shape[:2] != shape:
                    raise VideoError(f"frame {fr.index} is {img.shape[1]}x{img.shape[0]}, "
                                     f"the video is {shape[1]}x{shape[0]}")
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                if fr.pts is None or fr.time_base is None:
                    pts = round(fr.index / (rate * tb))
                else:
                    pts = round(fr.pts * fr.time_base / tb)
                if last_pts is not None and pts <= last_pts:
                    pts = last_pts + 1  # encoders need strictly increasing timestamps
                vf.pts, vf.time_base, last_pts = pts, tb, pts
                if audio is not None:
                    audio.mux_until(float(pts * tb))
                out.mux(stream.encode(vf))
                n += 1
                if progress is not None:
                    progress(n, total)
            if stream is None:
                raise VideoError(f"no frames to write to {dst}")
            out.mux(stream.encode(None))
            if audio is not None:
                audio.finish()
        except av.FFmpegError as e:
            raise VideoError(f"cannot write {dst} ({_first_line(e)})") from None
        finally:
            if audio is not None:
                audio.close()
            try:
                out.close()
            except av.FFmpegError:
                pass
    return {"frames": n, "width": shape[1], "height": shape[0], "fps": float(rate),
            "audio": audio_mode, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------
# The entry points
# --------------------------------------------------------------------------------------


def stylize_video(net, src, dst, style=None, size: int | None = None, stabilize="flow",
                  progress: Callable | None = None) -> dict:
    """Stylise the clip ``src`` into ``dst`` with the ``TransformerNet`` ``net``.

    ``style``: as ``net.stylize`` takes it (many-style networks); ``size``: the output's
    longest side (sides rounded to even), default the source's size; ``stabilize``:
    "flow" (default), "none" (frame by frame) or a ``StabilizerConfig``;
    ``progress(done, total)`` after each frame (``total``: the stated frame count, else
    duration × rate, else None). Frame rate, frame count, timestamps and audio are kept.

    Returns ``{"frames", "width", "height", "fps", "audio", "seconds",
    "frames_per_second", "stabilize"}``. Raises ``VideoError`` for unreadable input or an
    unwritable output (then ``dst`` is untouched), ``ValueError`` for a bad style."""
    net.style_mix(style)  # a bad style fails before any decoding
    stab = make_stabilizer(stabilize)
    info = probe(src)
    _codec_for(_import_av(), Path(dst))
    frames = stylize_frames(net, read_frames(src, size), style, stab or "none")
    stats = write_video(dst, frames, src, progress, info.total, info.rate)
    stats["frames_per_second"] = stats["frames"] / stats["seconds"]
    stats["stabilize"] = stabilize if isinstance(stabilize, str) else "flow"
    return stats


def stylize_chunk(net, src, start: int, stop: int, style=None, size: int | None = None,
                  stabilize="flow", warmup: int = WARMUP_FRAMES) -> list[Frame]:
    """Frames ``[start, stop)`` of ``src`` stylised, as ``Frame``s in order: one piece of a
    clip, decoded from the file (``stylize_chunk_frames`` takes the frames instead). With
    stabilisation, the stabiliser first runs over frames ``[start − warmup, start)``
    (stylised, then dropped), so its state at ``start`` is close to that of one
    sequential pass, and chunks stitched in order (``write_video(dst, chain(*chunks),
    src)``) show no flicker at their seams (``WARMUP_FRAMES``). The frames before
    ``start − warmup`` are decoded, not converted. Memory: the chunk's frames."""
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop and warmup >= 0):
        raise ValueError(f"a chunk needs 0 <= start < stop and warmup >= 0, got {start}, {stop}, {warmup}")
    lead = min(start, warmup) if make_stabilizer(stabilize) is not None else 0
    return stylize_chunk_frames(net, Chunk(read_frames(src, size, start - lead, stop), lead), style, stabilize)


class Chunk(NamedTuple):
    """A piece of a clip for a cluster worker: the first ``lead`` frames only warm the
    stabiliser up (the frames just before the piece), the others are the piece's own."""
    frames: Iterable[Frame]  # a list when it travels to a worker (``split_frames``)
    lead: int


def split_frames(frames: Iterable[Frame], length: int, warmup: int = 0) -> Iterator[Chunk]:
    """Cut a stream of frames into consecutive ``Chunk``s of ``length`` frames of their own
    (the last one shorter), each led by the ``warmup`` frames before it (fewer at the
    start). A generator that holds one chunk and its lead at a time."""
    if length < 1 or warmup < 0:
        raise ValueError(f"chunks need length >= 1 and warmup >= 0, got {length}, {warmup}")
    it, lead = iter(frames), []
    while own := list(islice(it, length)):
        yield Chunk(lead + own, len(lead))
        lead = (lead + own)[-warmup:] if warmup else []


def stylize_chunk_frames(net, chunk: Chunk, style=None, stabilize="flow") -> list[Frame]:
    """The chunk's own frames stylised (``stylize_frames`` over all of its frames, the
    lead dropped): what a cluster worker returns for one piece of a clip."""
    return list(islice(stylize_frames(net, chunk.frames, style, stabilize), chunk.lead, None))


def chunk_length(total: int | None, workers: int, warmup: int) -> int:
    """Frames of its own per chunk when a clip of ``total`` frames (None: not known) is
    cut for ``workers`` workers: ``CHUNK_WARMUPS`` × the warm-up with stabilisation, so
    that the warm-up adds 1/``CHUNK_WARMUPS`` of network passes; ``PLAIN_CHUNK_FRAMES``
    without one (no overhead to spread, and short chunks balance the workers); fewer
    for a short clip, so that every worker gets a chunk."""
    base = CHUNK_WARMUPS * warmup if warmup else PLAIN_CHUNK_FRAMES
    return base if total is None else max(1, min(base, -(-total // max(1, workers))))


# --------------------------------------------------------------------------------------
# Measurement: clips with known motion, warping error, sharpness
# --------------------------------------------------------------------------------------


def camera_clip(image, frames: int, height: int, width: int, motion: str = "pan",
                step: float = 3.0) -> tuple[list, list]:
    """A clip filmed by a virtual camera over a still ``image`` ((H, W, 3) in [0, 1]),
    and its true motion.

    Frame t samples the image at ``a_t·p + c_t`` (p a frame pixel, a_t the image pixels
    per frame pixel), bicubically. ``"pan"``: a_t = 1, c_t moves ``step`` px per frame
    along a 3:1 diagonal (sub-pixel steps in y when step is not a multiple of 3);
    ``"zoom"``: c fixed at the image centre, a_t = 1.2·(1 − step/100)^t, a zoom in of
    ``step`` % per frame. The image must cover the path (it is checked).

    Returns ``(frames, flows)``: ``frames[t]`` (height, width, 3) uint8;
    ``flows[t]`` for t ≥ 1 the true backward flow t → t−1,
    ``(a_t·p + c_t − c_{t−1}) / a_{t−1} − p`` (``flows[0]`` is None)."""
    img = np.asarray(image, dtype=np.float32)
    IH, IW = img.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    p = np.stack([xx, yy], -1)  # (h, w, 2) frame pixel (x, y)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    if motion == "pan":
        d = step * np.array([3.0, 1.0]) / np.sqrt(10.0)
        a = [1.0] * frames
        c = [np.array([(IW - width - d[0] * (frames - 1)) / 2, (IH - height - d[1] * (frames - 1)) / 2]) + t * d
             for t in range(frames)]
    elif motion == "zoom":
        a = [1.2 * (1 - step / 100) ** t for t in range(frames)]
        c = [np.array([(IW - 1) / 2, (IH - 1) / 2]) - at * centre for at in a]
    else:
        raise ValueError(f"motion must be 'pan' or 'zoom', got {motion!r}")
    out, flows = [], []
    cv2 = _import_cv2()
    for t in range(frames):
        src = a[t] * p + c[t]  # (h, w, 2) image coordinates of each frame pixel
        if src.min() < 0 or src[..., 0].max() > IW - 1 or src[..., 1].max() > IH - 1:
            raise ValueError(f"the image ({IW}x{IH}) is too small for this {motion} of "
                             f"{frames} frames at {width}x{height}")
        fr = cv2.remap(img, src[..., 0].astype(np.float32), src[..., 1].astype(np.float32),
                       cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(np.rint(fr * 255), 0, 255).astype(np.uint8))
        flows.append(None if t == 0 else ((src - c[t - 1]) / a[t - 1] - p).astype(np.float32))
    return out, flows


def warping_error(prev, cur, flow, valid=None) -> float:
    """Temporal warping error: mean over valid pixels and channels of
    ``|cur(p) − warp(prev, flow)(p)|`` (bilinear), in the images' units. ``flow``: t → t−1;
    ``valid``: (H, W) bool (default: where ``p + flow(p)`` is at least 1 px inside)."""
    valid = inside_mask(flow, 1.0) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        raise ValueError("no valid pixels to measure the warping error on")
    diff = np.abs(np.asarray(cur, np.float32) - warp(prev, flow))
    return float(diff[valid].mean())


def sharpness(img) -> dict:
    """Sharpness of an (H, W, 3) image in [0, 255], over the interior pixels (no border
    effects): ``gradient``, the mean Sobel gradient magnitude, and ``laplacian``, the
    variance of the 4-neighbour Laplacian (it weighs the finest detail most), of the luma
    (BT.601); ``gradient_rgb`` and ``laplacian_rgb``, the same of R, G and B, averaged."""
    a = np.asarray(img, dtype=np.float64)
    planes = {"": a @ np.array([0.299, 0.587, 0.114]), "_rgb": [a[..., c] for c in range(3)]}
    out = {}
    for suffix, ys in planes.items():
        grads, laps = [], []
        for Y in (ys if isinstance(ys, list) else [ys]):  # Y: (H, W)
            gx = (Y[:-2, 2:] + 2 * Y[1:-1, 2:] + Y[2:, 2:]) - (Y[:-2, :-2] + 2 * Y[1:-1, :-2] + Y[2:, :-2])
            gy = (Y[2:, :-2] + 2 * Y[2:, 1:-1] + Y[2:, 2:]) - (Y[:-2, :-2] + 2 * Y[:-2, 1:-1] + Y[:-2, 2:])
            lap = Y[:-2, 1:-1] + Y[2:, 1:-1] + Y[1:-1, :-2] + Y[1:-1, 2:] - 4 * Y[1:-1, 1:-1]
            grads.append(np.sqrt(gx ** 2 + gy ** 2).mean())
            laps.append(lap.var())
        out["gradient" + suffix], out["laplacian" + suffix] = float(np.mean(grads)), float(np.mean(laps))
    return out


def measure_stability(net, frames, flows, style=None, stabilize="flow") -> dict:
    """Stylise a clip with known motion (``camera_clip``) frame by frame and stabilised,
    and measure both.

    Each frame is stylised twice, once alone and once as ``stylize_frames`` does with the
    stabiliser (its flow work in a second thread during the network's pass, then the
    blend), in alternating order, so both see the same machine load:
    ``seconds_network`` and ``seconds_stabilized`` per frame (means over frames 1…T−1,
    the frames the stabiliser works on). For ``"none"`` and ``"flow"`` each:
    ``warping_error`` (mean over consecutive frames, true motion), ``warping_error_flow``
    (with the Farnebäck flow of the input frames and its consistency mask: the metric of
    Ruder et al. 2016, from a flow the stabiliser does not use), the four ``sharpness``
    numbers (means over the frames) and ``outputs`` ((H, W, 3) uint8)."""
    from concurrent.futures import ThreadPoolExecutor

    from .images import to_uint8

    stab = make_stabilizer(stabilize)
    if stab is None:
        raise ValueError("measure_stability compares frame by frame with a stabiliser; got stabilize='none'")
    plain, stable, t_none, t_flow = [], [], [], []
    with ThreadPoolExecutor(1) as pool:
        for i, f in enumerate(frames):
            x = f.astype(np.float32) / 255.0
            for mode in (("none", "flow") if i % 2 else ("flow", "none")):
                t0 = time.perf_counter()
                if mode == "none":
                    plain.append(to_uint8(net.stylize(x, style)))
                    t_none.append(time.perf_counter() - t0)
                else:
                    carried = pool.submit(stab.prepare, f)
                    O = stab.finish(net.stylize(x, style) * 255.0, carried.result())
                    t_flow.append(time.perf_counter() - t0)
                    stable.append(to_uint8(O / 255.0))
    est = []
    for t in range(1, len(frames)):
        b = optical_flow(frames[t], frames[t - 1], "farneback")
        est.append((b, consistency_mask(b, optical_flow(frames[t - 1], frames[t], "farneback"))))
    out = {"seconds_network": float(np.mean(t_none[1:])), "seconds_stabilized": float(np.mean(t_flow[1:]))}
    for name, outs in (("none", plain), ("flow", stable)):
        sharp = [sharpness(o) for o in outs]
        out[name] = {
            "warping_error": float(np.mean([warping_error(outs[t - 1], outs[t], flows[t])
                                            for t in range(1, len(outs))])),
            "warping_error_flow": float(np.mean([warping_error(outs[t - 1], outs[t], b, m)
                                                 for t, (b, m) in enumerate(est, start=1)])),
            **{k: float(np.mean([sh[k] for sh in sharp])) for k in sharp[0]},
            "outputs": outs,
        }
    return out
