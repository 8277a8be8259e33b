"""A painting-like style image that minnst draws itself: a stained-glass rose window.

The demo (``python -m minnst.gatys`` with no arguments) needs a style image that ships
with the code, so we paint one, deterministically from a seed, in NumPy only:

1. **Cells.** Sites on concentric rings with n-fold symmetry make the rose; a jittered grid
   fills the corners. Each pixel belongs to its nearest site (a Voronoi diagram), and its
   distance to the cell's border is the distance to the nearest bisector,
   ``min_b (|x − s_b|² − |x − s_a|²) / (2 |s_a − s_b|)`` over the other sites ``b``.
2. **Glass.** Jewel colours (ruby, sapphire, emerald, amber, amethyst, turquoise, gold),
   chosen per ring and repeated around it so the rose stays symmetric; each pane gets a
   linear gradient in a random direction (uneven glass thickness), a glow towards its
   centre, and a shared multi-octave value-noise "seedy glass" texture with fine streaks.
3. **Lead.** Dark came of constant width along every border, anti-aliased, with a dull
   highlight along its middle (the rounded metal); a heavier ring frames the rose.
4. **Light.** The window is brighter at its middle, as if lit from behind.

``stained_glass(512, 512, seed=0)`` returns an ``(H, W, 3)`` float32 image in [0, 1] in
about half a second; ``python -m minnst.procedural out.png`` writes one.
"""
from __future__ import annotations

import sys

import numpy as np

# Jewel tones (linear-ish RGB in [0, 1]): deep, saturated, as glass looks with light behind.
JEWELS = {
    "ruby": (0.66, 0.05, 0.10),
    "garnet": (0.45, 0.03, 0.12),
    "sapphire": (0.06, 0.16, 0.62),
    "cobalt": (0.10, 0.28, 0.78),
    "emerald": (0.05, 0.50, 0.24),
    "amber": (0.92, 0.56, 0.08),
    "gold": (0.98, 0.80, 0.25),
    "amethyst": (0.42, 0.14, 0.58),
    "turquoise": (0.08, 0.58, 0.62),
    "rose": (0.74, 0.16, 0.40),
}
LEAD = np.array([0.05, 0.045, 0.04], dtype=np.float32)
LEAD_HIGHLIGHT = np.array([0.22, 0.21, 0.20], dtype=np.float32)
ROSE_RADIUS = 0.42  # of the shorter side

# (ring radius as a fraction of the rose radius, number of panes, colours around the ring)
ROSE_RINGS = (
    (0.00, 1, ("gold",)),
    (0.16, 8, ("ruby", "amber")),
    (0.32, 16, ("sapphire", "emerald", "sapphire", "amethyst")),
    (0.50, 16, ("gold", "ruby")),
    (0.68, 32, ("cobalt", "turquoise", "cobalt", "rose")),
    (0.86, 32, ("garnet", "amber", "emerald", "amber")),
)
BACKGROUND = ("sapphire", "cobalt", "amethyst", "turquoise", "garnet", "emerald")


def _value_noise(h: int, w: int, cells: int, rng) -> np.ndarray:
    """Smooth noise in [−1, 1]: a (cells+1)² random grid upsampled bilinearly to (h, w)
    with a smoothstep fade (no visible grid lines)."""
    g = rng.uniform(-1.0, 1.0, size=(cells + 2, cells + 2)).astype(np.float32)
    y = np.linspace(0, cells, h, dtype=np.float32)
    x = np.linspace(0, cells, w, dtype=np.float32)
    iy, ix = y.astype(np.int32), x.astype(np.int32)
    fy, fx = y - iy, x - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
    a = g[iy][:, ix] * (1 - fx) + g[iy][:, ix + 1] * fx  # (h, w)
    b = g[iy + 1][:, ix] * (1 - fx) + g[iy + 1][:, ix + 1] * fx
    return a * (1 - fy[:, None]) + b * fy[:, None]


def _sites(h: int, w: int, rng):
    """Voronoi sites (n, 2) as (y, x) and their colours (n, 3): the rose's, then the corners'."""
    cy, cx = h / 2.0, w / 2.0
    R = ROSE_RADIUS * min(h, w)
    rose_pts, rose_cols = [], []
    for frac, count, names in ROSE_RINGS:
        offset = rng.uniform(0, 2 * np.pi / count) if count > 1 else 0.0
        for k in range(count):
            t = offset + 2 * np.pi * k / count
            rose_pts.append((cy + frac * R * np.sin(t), cx + frac * R * np.cos(t)))
            rose_cols.append(JEWELS[names[k % len(names)]])
    # A jittered grid outside the rose, so the corners are glass too.
    bg_pts, bg_cols = [], []
    step = max(0.15 * min(h, w), max(h, w) / 40)  # panes stay panes on very long images
    for gy in np.arange(-step / 2, h + step, step):
        for gx in np.arange(-step / 2, w + step, step):
            y, x = gy + rng.uniform(-0.4, 0.4) * step, gx + rng.uniform(-0.4, 0.4) * step
            if np.hypot(y - cy, x - cx) > R - 0.2 * step:
                bg_pts.append((y, x))
                bg_cols.append(JEWELS[BACKGROUND[rng.integers(len(BACKGROUND))]])

    def finish(pts, cols):
        cols = np.asarray(cols, dtype=np.float32)
        cols = cols * rng.uniform(0.82, 1.12, size=(len(cols), 1)).astype(np.float32)  # pane to pane
        return np.asarray(pts, dtype=np.float32).reshape(-1, 2), np.clip(cols, 0, 1).reshape(-1, 3)

    return finish(rose_pts, rose_cols), finish(bg_pts, bg_cols)


def _voronoi(P: np.ndarray, sites: np.ndarray):
    """For points P (p, 2): the nearest site's index and the distance to its cell's border
    (the nearest bisector with another site), in chunks of points whose (chunk, n)
    temporaries stay near 8 MB (cache-friendly) whatever the number of sites."""
    label = np.empty(len(P), dtype=np.int32)
    border = np.full(len(P), np.inf, dtype=np.float32)
    if len(sites) < 2:
        label[:] = 0
        return label, border
    s2 = (sites * sites).sum(1)  # (n,)
    sep = np.linalg.norm(sites[:, None] - sites[None], axis=2)  # (n, n) site-to-site distances
    inv2sep = 0.5 / np.maximum(sep, 1e-6)
    chunk = max(64, (1 << 21) // len(sites))
    for i in range(0, len(P), chunk):
        p = P[i:i + chunk]
        d2 = (p * p).sum(1)[:, None] - 2 * p @ sites.T + s2  # (c, n) squared distances
        a = d2.argmin(1)
        da = d2[np.arange(len(a)), a]
        # distance from p to the bisector of (s_a, s_b) = (|p − s_b|² − |p − s_a|²) / (2|s_a − s_b|)
        bis = (d2 - da[:, None]) * inv2sep[a]  # (c, n)
        bis[np.arange(len(a)), a] = np.inf  # a cell has no border with itself
        label[i:i + chunk] = a
        border[i:i + chunk] = bis.min(1)
    return label, border


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def stained_glass(height: int = 512, width: int | None = None, seed: int = 0) -> np.ndarray:
    """A stained-glass rose window, ``(height, width, 3)`` float32 in [0, 1].

    Deterministic for a given (height, width, seed); different seeds rotate the rings,
    move the background panes and vary each pane's shade and texture.
    """
    width = height if width is None else width
    h, w = int(height), int(width)
    if h < 16 or w < 16:
        raise ValueError(f"stained_glass needs at least 16×16 pixels, got {h}×{w}")
    rng = np.random.default_rng(seed)
    s = min(h, w) / 512.0  # scale every length with the image
    (rose_sites, rose_cols), (bg_sites, bg_cols) = _sites(h, w, rng)
    sites = np.concatenate([rose_sites, bg_sites])
    cols = np.concatenate([rose_cols, bg_cols])

    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                         indexing="ij")
    # Inside the frame only the rose's sites count, outside only the corners' ones.
    R_frame = (ROSE_RADIUS + 0.05) * min(h, w)
    rad = np.hypot(yy - h / 2, xx - w / 2)
    inside = (rad < R_frame).ravel()
    P = np.stack([yy.ravel(), xx.ravel()], 1)  # (h·w, 2)
    label = np.empty(h * w, dtype=np.int32)
    border = np.empty(h * w, dtype=np.float32)
    label[inside], border[inside] = _voronoi(P[inside], rose_sites)
    lab_bg, border[~inside] = _voronoi(P[~inside], bg_sites)
    label[~inside] = lab_bg + len(rose_sites)
    label, border = label.reshape(h, w), border.reshape(h, w)
    frame = np.abs(rad - R_frame)  # distance to the frame circle

    # Each pane: a linear gradient in a random direction, a soft glow at its site, and
    # darker glass along its leads (the pane is thicker where it is gripped).
    ang = rng.uniform(0, 2 * np.pi, len(sites)).astype(np.float32)
    strength = rng.uniform(0.10, 0.30, len(sites)).astype(np.float32)
    dy, dx = yy - sites[label, 0], xx - sites[label, 1]
    along = (dy * np.sin(ang)[label] + dx * np.cos(ang)[label]) / (40 * s)
    shade = 1.0 + strength[label] * np.tanh(along) + 0.2 * np.exp(-(dy * dy + dx * dx) / (2 * (20 * s) ** 2))
    edge = np.minimum(border, frame)
    shade = shade * (0.7 + 0.3 * _smoothstep(0.0, 9.0 * s, edge))

    # Glass texture: a few octaves of value noise, and streaks (noise stretched sideways).
    tex = (0.5 * _value_noise(h, w, 5, rng) + 0.3 * _value_noise(h, w, 19, rng)
           + 0.2 * _value_noise(h, w, max(8, int(70 * s)), rng))
    streak = _value_noise(h, max(4, -(-w // 6)), max(8, int(110 * s)), rng)
    streak = np.repeat(streak, 6, axis=1)[:, :w]
    shade = shade * (1.0 + 0.28 * tex + 0.08 * streak)

    # Backlight: brighter in the middle of the window.
    r = rad / (0.5 * np.hypot(h, w))
    shade = shade * (1.15 - 0.5 * r * r)
    img = cols[label] * shade[..., None]
    img = img + 0.12 * np.clip(shade - 1.0, 0, None)[..., None]  # hot spots whiten a little

    # Lead came along every border (half-width ``half``), heavier around the rose, with a
    # dull highlight along its middle where the rounded metal catches the light.
    half = 2.0 * s + 0.6
    dist = np.minimum(border, frame - 1.5 * half)
    lead = 1.0 - _smoothstep(half - 0.7, half + 0.7, dist)
    ridge = 1.0 - _smoothstep(0.0, 0.7 * half, np.abs(np.minimum(border, frame)))
    metal = LEAD + (LEAD_HIGHLIGHT - LEAD) * (ridge * lead)[..., None]
    img = img * (1.0 - lead[..., None]) + metal * lead[..., None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def main(argv=None) -> int:
    """``python -m minnst.procedural OUT.png [SIZE] [SEED]``: write a stained-glass image."""
    from . import images

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m minnst.procedural OUT.png [SIZE=512] [SEED=0]",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        size = images.check_size(int(argv[1])) if len(argv) > 1 else 512
        seed = int(argv[2]) if len(argv) > 2 else 0
    except (ValueError, images.ImageError) as e:
        print(f"minnst.procedural: error: {e}", file=sys.stderr)
        return 2
    path = images.save_image(argv[0], stained_glass(size, size, seed))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
