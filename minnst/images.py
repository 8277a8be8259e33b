"""Images in and out, ImageNet normalisation, and colour preservation.

Conventions: an *image* is a host NumPy array ``(H, W, 3)`` float32 in [0, 1], RGB. The
network sees ``x = preprocess(img)``: ``(1, 3, H, W)`` with ``x = (img − mean) / std``
per channel (ImageNet statistics, RGB order, the normalisation torchvision's VGG16 was
trained with). ``preprocess_backward`` is its adjoint, which carries a gradient with
respect to ``x`` back to the pixels; ``deprocess`` is its inverse (clipped to [0, 1]).

Colour preservation (Gatys, Bethge, Hertzmann & Shechtman 2016, "Preserving color in
neural artistic style transfer"): ``transfer_luminance`` (stylise luminance only, keep
the content's chroma) and ``match_color_histogram`` (linear colour transfer: recolour
the style image so its pixel mean and covariance equal the content's).
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from minnst.backend import get_xp, to_host
from minnst.files import atomic_write

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)  # RGB

MIN_SIZE, MAX_SIZE = 16, 8192
JPEG_QUALITY = 95

# YIQ (NTSC 1953), as used by Gatys et al. 2016 for luminance-only transfer.
# Rows: Y, I, Q from (R, G, B). Y is luminance, I and Q the chroma.
RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114],
     [0.595716, -0.274453, -0.321263],
     [0.211456, -0.522591, 0.311135]],
    dtype=np.float64,
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  IndexError, TypeError, Image.DecompressionBombError)  # what a bad file raises


class ImageError(ValueError):
    """An image file cannot be used (one line naming the file; the CLIs exit 2 on it)."""


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


DEMO_PHOTO = "grace_hopper.jpg"  # ships with matplotlib (a public-domain US Navy photo)


def demo_photo() -> Path:
    """matplotlib's bundled photo of Grace Hopper, the tools' no-argument demo input;
    ``ImageError`` when matplotlib or its sample data is missing."""
    try:
        from matplotlib import cbook

        path = Path(cbook.get_sample_data(DEMO_PHOTO, asfileobj=False))
    except Exception as e:  # matplotlib missing or built without its sample data
        raise ImageError(f"matplotlib's sample photo {DEMO_PHOTO} is unavailable ({e})") from None
    if not path.is_file():
        raise ImageError(f"matplotlib's sample photo is missing ({path})")
    return path


def check_size(size, what: str = "size") -> int:
    """``size`` as an int in [16, 8192] (the longest image side), else ``ImageError``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        else:
            raise ImageError(f"{what} must be a whole number of pixels, got {size!r}")
    size = int(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ImageError(f"{what} must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    return size


def _has_transparency(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) float in [0, 1] -> (H, W, 3): ``rgb·a + 1·(1 − a)``."""
    rgb, a = rgba[..., :3], rgba[..., 3:4]
    return rgb * a + (1.0 - a)


def pil_to_float(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as ``(H, W, 3)`` float32 in [0, 1].

    - 8-bit modes (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, …): PIL's RGB conversion / 255;
    - transparency (RGBA, LA, PA, P or L or RGB with a transparent colour): composited
      on white;
    - 16-bit integer (I;16, I;16B, I;16L, I;16N) and 32-bit integer I: / 65535
      (16-bit data; clipped to [0, 1]);
    - float F: taken as intensities in [0, 1] when the maximum is <= 1, otherwise as
      0–255 values (PIL's own convention for F -> L); NaN -> 0; clipped;
    - grayscale results are repeated across the three channels.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        g = np.asarray(im).astype(np.float32) / 65535.0
        out = np.clip(g, 0.0, 1.0)[..., None].repeat(3, axis=2)
    elif mode == "F":
        g = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if g.size and g.max() > 1.0:
            g = g / 255.0
        out = np.clip(g, 0.0, 1.0)[..., None].repeat(3, axis=2)
    elif _has_transparency(im):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        out = _composite_on_white(rgba)
    else:
        out = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(out, dtype=np.float32)


def load_image(path, size=None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` float32 RGB in [0, 1].

    ``size``: if given, the longest side is resized to ``size`` pixels (aspect kept,
    Lanczos, which Pillow antialiases when downscaling). EXIF orientation is applied.
    The whole file is decoded, so a truncated file is an error. Raises ``ImageError``
    (one line naming the file) for a missing file, a directory, a non-image, a
    truncated or corrupt file, an empty image, or a ``size`` outside [16, 8192].
    """
    size = None if size is None else check_size(size)
    path = _check_image_path(path)
    try:
        return _decode(path, path, size)
    except PermissionError:
        raise ImageError(f"cannot read image file (permission denied): {path}") from None


def read_image_bytes(path) -> bytes:
    """The bytes of an image file, undecoded (what a cluster task carries to a worker that
    has no access to the file); ``ImageError`` as ``load_image`` for a file that is
    missing, a directory or unreadable."""
    path = _check_image_path(path)
    try:
        return path.read_bytes()
    except PermissionError:
        raise ImageError(f"cannot read image file (permission denied): {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read image file {path} ({e.strerror or e})") from None


def decode_image(data: bytes, size=None, name: str = "image") -> np.ndarray:
    """``load_image`` of a file's bytes (``read_image_bytes``): the same pixels as reading
    the file; ``name`` (the file's path where it came from) is what messages call it."""
    return _decode(io.BytesIO(data), name, None if size is None else check_size(size))


def _check_image_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    return path


def _decode(source, name, size) -> np.ndarray:
    """``load_image``'s decode of ``source`` (a path or a binary file object) named
    ``name``; ``size`` checked already."""
    try:
        with Image.open(source) as im:
            im.load()  # decode everything now: truncation and corruption surface here
            if im.width == 0 or im.height == 0:
                raise ImageError(f"image {name} is empty ({im.width}x{im.height})")
            try:
                im = ImageOps.exif_transpose(im)
            except _DECODE_ERRORS:  # malformed EXIF: keep the stored orientation
                pass
            img = pil_to_float(im)
    except (ImageError, PermissionError):
        raise
    except UnidentifiedImageError:
        raise ImageError(f"not an image file (or an unsupported format): {name}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image {name} has too many pixels to load safely") from None
    except _DECODE_ERRORS as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise ImageError(f"cannot decode image file {name} (truncated or corrupt: {first})") from None
    if size is not None:
        img = resize(img, size=size)
    return img


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def to_uint8(img) -> np.ndarray:
    """Float image in [0, 1] -> uint8 ``round(255·clip(img))`` (NaN -> 0); uint8 passes."""
    a = to_host(img)
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _png_info(metadata: dict | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        try:
            text.encode("latin-1")
            info.add_text(str(key), text)
        except UnicodeEncodeError:
            info.add_itxt(str(key), text)
    return info


def save_image(path, img, metadata: dict | None = None) -> Path:
    """Write ``img`` ((H, W, 3) float in [0, 1], clipped, or uint8) by extension
    (``encode_image``: .png, or .jpg/.jpeg). Parent directories are created; the file
    appears atomically. Returns the path."""
    path = Path(path)
    try:
        data = encode_image(img, path.suffix, metadata)
    except ImageError:
        raise ImageError(f"cannot save {path}: use a .png or .jpg file name") from None
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def encode_image(img, suffix: str, metadata: dict | None = None) -> bytes:
    """The bytes of the image file ``save_image`` writes for a name ending in ``suffix``.

    ``.png``: lossless, ``metadata`` stored as PNG text chunks (one per key; non-string
    values as JSON; read back with ``read_png_metadata``). ``.jpg``/``.jpeg``: quality
    95, ``metadata`` as a JSON comment. ``img``: (H, W, 3) (or (H, W)) float in [0, 1],
    clipped, or uint8."""
    a = to_uint8(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"save_image needs an (H, W, 3) image, got shape {a.shape}")
    ext = suffix.lower()
    pil = Image.fromarray(np.ascontiguousarray(a), mode="RGB")
    buf = io.BytesIO()
    if ext == ".png":
        pil.save(buf, format="PNG", pnginfo=_png_info(metadata))
    elif ext in (".jpg", ".jpeg"):
        comment = json.dumps(metadata, sort_keys=True, default=str) if metadata else None
        kwargs = {"comment": comment} if comment else {}
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY, **kwargs)
    else:
        raise ImageError(f"cannot encode an image as {suffix!r}: use .png or .jpg")
    return buf.getvalue()


def read_png_metadata(path) -> dict[str, str]:
    """The text chunks (tEXt/iTXt/zTXt) of a PNG file as ``{key: str}``."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ImageError(f"not a PNG file: {path}")
            im.load()  # text chunks after the image data are read on load
            return {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"not an image file: {path}") from None
    except _DECODE_ERRORS as e:
        raise ImageError(f"cannot read PNG {path} ({e})") from None


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def fit_longest(h: int, w: int, size: int) -> tuple[int, int]:
    """``(H', W')`` of an ``h × w`` image resized so its longest side is ``size`` (aspect
    kept, each side rounded, at least 1)."""
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(img, size=None, shape=None) -> np.ndarray:
    """Resize a float image (H, W, C) or (H, W) with Lanczos; same dtype, host array.

    Exactly one of ``size`` (the longest side; aspect kept) or ``shape`` = (H', W').
    Each channel is resampled in float32 (Pillow mode F, antialiased when shrinking),
    then clipped to the input's value range (Lanczos overshoots at edges). uint8 input
    is resampled in float and returned as uint8.
    """
    if (size is None) == (shape is None):
        raise ValueError("resize needs exactly one of size= or shape=")
    a = to_host(img)
    if a.ndim not in (2, 3) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"resize needs an (H, W[, C]) image, got shape {a.shape}")
    h, w = a.shape[:2]
    oh, ow = fit_longest(h, w, int(size)) if size is not None else (int(shape[0]), int(shape[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"cannot resize to {oh}x{ow}")
    was_uint8 = a.dtype == np.uint8
    f = a.astype(np.float32) / 255.0 if was_uint8 else a
    if (oh, ow) == (h, w):
        out = f.astype(np.float32, copy=True)
    else:
        chans = f[..., None] if f.ndim == 2 else f
        planes = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32), mode="F")
                .resize((ow, oh), resample=Image.Resampling.LANCZOS),
                dtype=np.float32,
            )
            for c in range(chans.shape[2])
        ]
        out = np.stack(planes, axis=2)
        out = out[..., 0] if f.ndim == 2 else out
        out = np.clip(out, np.min(f), np.max(f))
    if was_uint8:
        return to_uint8(out)
    return out.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32)


# --------------------------------------------------------------------------------------
# ImageNet normalisation
# --------------------------------------------------------------------------------------


def preprocess(img, xp=None):
    """``(H, W, 3)`` (or ``(N, H, W, 3)``) in [0, 1] -> ``(1, 3, H, W)`` (``(N, 3, H, W)``).

    ``x[n, c, i, j] = (img[n, i, j, c] − mean[c]) / std[c]`` with the ImageNet RGB
    statistics. float64 input stays float64 (gradient checks); anything else becomes
    float32 (uint8 is first divided by 255). ``xp`` defaults to the array module of
    ``img``; pass ``cupy`` to move host data to the GPU. Contiguous output.
    """
    xp = xp or get_xp(img)
    a = xp.asarray(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    a = a.astype(dtype, copy=False)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[3] != 3:
        raise ValueError(f"preprocess needs (H, W, 3) or (N, H, W, 3), got shape {tuple(a.shape)}")
    mean = xp.asarray(IMAGENET_MEAN, dtype=dtype)
    std = xp.asarray(IMAGENET_STD, dtype=dtype)
    x = (a - mean) / std  # (N, H, W, 3)
    return xp.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, H, W)


def preprocess_backward(dx, batch: bool = False):
    """Adjoint of ``preprocess``: ``d img[n, i, j, c] = dx[n, c, i, j] / std[c]``.

    ``dx`` is ``(N, 3, H, W)``; returns ``(H, W, 3)`` when N == 1 and not ``batch``,
    else ``(N, H, W, 3)``. Same array module and float dtype as ``dx``.
    """
    xp = get_xp(dx)
    if dx.ndim != 4 or dx.shape[1] != 3:
        raise ValueError(f"preprocess_backward needs (N, 3, H, W), got shape {tuple(dx.shape)}")
    dtype = np.float64 if dx.dtype == np.float64 else np.float32
    std = xp.asarray(IMAGENET_STD, dtype=dtype)
    g = dx.astype(dtype, copy=False).transpose(0, 2, 3, 1) / std  # (N, H, W, 3)
    g = xp.ascontiguousarray(g)
    return g[0] if (g.shape[0] == 1 and not batch) else g


def deprocess(x) -> np.ndarray:
    """Inverse of ``preprocess``: ``(1, 3, H, W)`` or ``(3, H, W)`` -> host ``(H, W, 3)``
    float32 ``clip(x·std + mean, 0, 1)``; ``(N, 3, H, W)`` with N > 1 -> ``(N, H, W, 3)``."""
    a = to_host(x).astype(np.float32, copy=False)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"deprocess needs (N, 3, H, W) or (3, H, W), got shape {a.shape}")
    img = a.transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN  # (N, H, W, 3)
    img = np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)
    return img[0] if img.shape[0] == 1 else img


# --------------------------------------------------------------------------------------
# Colour preservation
# --------------------------------------------------------------------------------------


def _check_rgb(a, name: str) -> np.ndarray:
    a = to_host(a)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) image, got shape {a.shape}")
    return a.astype(np.float64)


def rgb_to_yiq(img) -> np.ndarray:
    """(…, 3) RGB -> (…, 3) YIQ: ``yiq = RGB_TO_YIQ @ rgb`` per pixel."""
    return np.asarray(img, dtype=np.float64) @ RGB_TO_YIQ.T


def yiq_to_rgb(yiq) -> np.ndarray:
    """Inverse of ``rgb_to_yiq``."""
    return np.asarray(yiq, dtype=np.float64) @ YIQ_TO_RGB.T


def transfer_luminance(content, stylized) -> np.ndarray:
    """Luminance-only transfer: the stylized image's Y with the content's I, Q (YIQ).

    Both ``(H, W, 3)`` in [0, 1] with the same shape. ``out = yiq_to_rgb([Y_s, I_c,
    Q_c])``, clipped to [0, 1], float32. (Gatys et al. 2016 also match the luminance
    histograms before stylising; that is the caller's step, on the Y channels.)
    """
    c = _check_rgb(content, "content")
    s = _check_rgb(stylized, "stylized")
    if c.shape != s.shape:
        raise ValueError(f"content {c.shape} and stylized {s.shape} must have the same shape")
    yiq = rgb_to_yiq(c)
    yiq[..., 0] = rgb_to_yiq(s)[..., 0]
    return np.clip(yiq_to_rgb(yiq), 0.0, 1.0).astype(np.float32)


def _sym_sqrt(cov: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric square root and inverse square root of a PSD 3×3 matrix.

    ``cov = V diag(λ) Vᵀ`` (``eigh``); ``√cov = V diag(√max(λ, 0)) Vᵀ`` and
    ``cov^{-1/2} = V diag(1/√max(λ, eps)) Vᵀ`` (eps keeps a flat image finite).
    """
    lam, v = np.linalg.eigh((cov + cov.T) / 2.0)
    sqrt = (v * np.sqrt(np.maximum(lam, 0.0))) @ v.T
    inv_sqrt = (v / np.sqrt(np.maximum(lam, eps))) @ v.T
    return sqrt, inv_sqrt


def match_color_histogram(source, target, eps: float = 1e-5) -> np.ndarray:
    """Recolour ``source`` so its pixel mean and covariance equal ``target``'s.

    Linear colour transfer (Gatys et al. 2016, §2.1; source = style, target = content):
    with per-image pixel means μ and 3×3 covariances Σ,
    ``x' = Σ_t^{1/2} Σ_s^{-1/2} (x − μ_s) + μ_t``, so ``cov(x') = Σ_t`` exactly (before
    clipping). Both ``(H, W, 3)`` in [0, 1], sizes may differ. Returns float32, clipped.
    """
    s = _check_rgb(source, "source").reshape(-1, 3)  # (M_s, 3)
    t = _check_rgb(target, "target").reshape(-1, 3)  # (M_t, 3)
    mu_s, mu_t = s.mean(axis=0), t.mean(axis=0)
    cov_s = np.cov(s, rowvar=False, bias=True)
    cov_t = np.cov(t, rowvar=False, bias=True)
    _, inv_sqrt_s = _sym_sqrt(cov_s, eps)
    sqrt_t, _ = _sym_sqrt(cov_t, eps)
    a = sqrt_t @ inv_sqrt_s  # (3, 3)
    out = (s - mu_s) @ a.T + mu_t
    shape = to_host(source).shape
    return np.clip(out, 0.0, 1.0).reshape(shape).astype(np.float32)
