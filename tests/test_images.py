"""minnst.images: decoding every PIL mode, error handling, I/O, normalisation, colour."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from minnst import images as I


def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


# --------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------


def test_rgb_png_roundtrip_exact(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = I.load_image(_save(tmp_path, "rgb.png", Image.fromarray(a)))
    assert img.shape == (5, 7, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, a / np.float32(255))


def test_grayscale_L_and_1(tmp_path):
    img = I.load_image(_save(tmp_path, "l.png", Image.new("L", (4, 3), 128)))
    assert img.shape == (3, 4, 3)
    np.testing.assert_allclose(img, 128 / 255, atol=1e-7)
    img = I.load_image(_save(tmp_path, "one.png", Image.new("1", (4, 3), 1)))
    np.testing.assert_allclose(img, 1.0)


def test_LA_composited_on_white(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 0))  # fully transparent black -> white
    im.putpixel((1, 0), (0, 255))  # opaque black stays black
    img = I.load_image(_save(tmp_path, "la.png", im))
    np.testing.assert_allclose(img[0, 0], 1.0)
    np.testing.assert_allclose(img[0, 1], 0.0)


def test_RGBA_composited_on_white(tmp_path):
    im = Image.new("RGBA", (1, 1), (255, 0, 0, 128))
    img = I.load_image(_save(tmp_path, "rgba.png", im))
    a = 128 / 255
    np.testing.assert_allclose(img[0, 0], [1.0, 1 - a, 1 - a], atol=1e-6)


def test_palette_and_palette_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    img = I.load_image(_save(tmp_path, "p.png", im))
    np.testing.assert_allclose(img[0], [[1, 0, 0], [0, 0, 1]])
    img = I.load_image(_save(tmp_path, "pt.png", im, transparency=1))  # index 1 transparent
    np.testing.assert_allclose(img[0], [[1, 0, 0], [1, 1, 1]])


def test_cmyk(tmp_path):
    im = Image.new("CMYK", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))  # white
    im.putpixel((1, 0), (0, 0, 0, 255))  # black
    im.putpixel((2, 0), (255, 0, 0, 0))  # cyan
    img = I.load_image(_save(tmp_path, "cmyk.tif", im))
    np.testing.assert_allclose(img[0], [[1, 1, 1], [0, 0, 0], [0, 1, 1]])


@pytest.mark.parametrize("mode, fmt", [("I;16", "png"), ("I;16B", "tif"), ("I", "tif")])
def test_16bit_scaled_by_65535(tmp_path, mode, fmt):
    raw = np.array([[0, 32768, 65535]], dtype=">u2" if mode == "I;16B" else "<u2")
    if mode == "I":
        im = Image.fromarray(raw.astype(np.int32))
    else:
        im = Image.frombytes(mode, (3, 1), raw.tobytes())
    path = _save(tmp_path, f"g16.{fmt}", im)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    img = I.load_image(path)
    np.testing.assert_allclose(img[0, :, 0], [0.0, 32768 / 65535, 1.0], atol=1e-6)
    assert np.all(img[..., 0] == img[..., 2])


def test_float_F(tmp_path):
    im = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert im.mode == "F"
    img = I.load_image(_save(tmp_path, "f.tif", im))
    np.testing.assert_allclose(img[0, :, 1], [0.0, 0.25, 1.0])
    im255 = Image.fromarray(np.array([[0.0, 127.5, 300.0]], dtype=np.float32))  # 0-255 scale
    np.testing.assert_allclose(I.pil_to_float(im255)[0, :, 0], [0.0, 0.5, 1.0])


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((2, 4, 3), np.uint8)  # H=2, W=4, one white pixel at the top-left
    a[0, 0] = 255
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = I.load_image(_save(tmp_path, "o.png", im, exif=exif))
    assert img.shape == (4, 2, 3)
    assert img[0, 1].min() == 1.0 and img.sum() == 3.0  # top-left went to the top-right


def test_size_keeps_aspect(tmp_path):
    path = _save(tmp_path, "wide.png", Image.new("RGB", (40, 20), (10, 200, 30)))
    img = I.load_image(path, size=16)
    assert img.shape == (8, 16, 3)
    np.testing.assert_allclose(img[4, 8], np.array([10, 200, 30]) / 255, atol=1e-5)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def _one_line_naming(err, path):
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg


def test_bad_files(tmp_path):
    for path, pat in [
        (tmp_path / "missing.png", "not found"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(I.ImageError, match=pat) as e:
            I.load_image(path)
        _one_line_naming(e, path)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG")
    with pytest.raises(I.ImageError, match="not an image") as e:
        I.load_image(text)
    _one_line_naming(e, text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(I.ImageError):
        I.load_image(empty)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    a = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = _save(tmp_path, f"full.{fmt.lower()}", Image.fromarray(a), format=fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(I.ImageError, match="truncated or corrupt") as e:
        I.load_image(cut)
    _one_line_naming(e, cut)


def test_check_size():
    assert I.check_size(512) == 512 and I.check_size(np.int64(16)) == 16 and I.check_size(64.0) == 64
    for bad in (15, 8193, 0, -5, "512", True, 12.5, None):
        with pytest.raises(I.ImageError):
            I.check_size(bad)
    with pytest.raises(I.ImageError, match="between 16 and 8192"):
        I.load_image("whatever.png", size=8)
    assert issubclass(I.ImageError, ValueError)


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def test_save_png_metadata_roundtrip(tmp_path):
    img = np.random.default_rng(2).random((6, 5, 3), dtype=np.float32)
    meta = {"config": {"size": 512, "style_layers": ["relu1_1"]}, "note": "héllo", "title": "✓ ünicode"}
    path = I.save_image(tmp_path / "deep" / "dir" / "out.png", img, metadata=meta)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["out.png"]
    back = I.load_image(path)
    np.testing.assert_array_equal(back, I.to_uint8(img) / np.float32(255))
    md = I.read_png_metadata(path)
    assert json.loads(md["config"]) == meta["config"]
    assert md["note"] == "héllo" and md["title"] == "✓ ünicode"


def test_save_clips_and_jpeg(tmp_path):
    img = np.full((8, 8, 3), 0.5, np.float32)
    img[0, 0] = [-1.0, 2.0, np.nan]
    u = I.to_uint8(img)
    assert u[0, 0].tolist() == [0, 255, 0] and u[1, 1].tolist() == [128, 128, 128]
    path = I.save_image(tmp_path / "o.jpg", img, metadata={"a": 1})
    with Image.open(path) as im:
        assert im.format == "JPEG"
    back = I.load_image(path)
    assert abs(float(back[4, 4, 0]) - 128 / 255) < 0.02
    u8 = np.zeros((4, 4, 3), np.uint8)
    u8[0, 0] = 200
    back = I.load_image(I.save_image(tmp_path / "u8.png", u8))
    assert back[0, 0, 0] == np.float32(200 / 255) and back[1, 1, 1] == 0.0


def test_too_many_pixels(tmp_path, monkeypatch):
    path = _save(tmp_path, "big.png", Image.new("RGB", (64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 * 100: a "bomb"
    with pytest.raises(I.ImageError, match="too many pixels"):
        I.load_image(path)


def test_save_rejects_unknown_extension_and_bad_shape(tmp_path):
    with pytest.raises(I.ImageError, match=".png or .jpg"):
        I.save_image(tmp_path / "o.gifx", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        I.save_image(tmp_path / "o.png", np.zeros((2, 2, 4)))
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


# --------------------------------------------------------------------------------------
# Resize and normalisation
# --------------------------------------------------------------------------------------


def test_resize():
    img = np.random.default_rng(3).random((30, 20, 3)).astype(np.float32)
    out = I.resize(img, shape=(11, 7))
    assert out.shape == (11, 7, 3) and out.dtype == np.float32
    assert out.min() >= img.min() and out.max() <= img.max()
    assert I.resize(img.astype(np.float64), size=15).dtype == np.float64
    assert I.resize(img, size=15).shape == (15, 10, 3)
    const = np.full((9, 13, 3), 0.3, np.float32)
    np.testing.assert_allclose(I.resize(const, size=40), 0.3, atol=1e-6)
    assert I.resize(I.to_uint8(img), size=10).dtype == np.uint8
    with pytest.raises(ValueError):
        I.resize(img)


def test_fit_longest():
    assert I.fit_longest(30, 20, 15) == (15, 10)  # the longest side becomes size
    assert I.fit_longest(20, 30, 60) == (40, 60)  # enlarging too
    assert I.fit_longest(512, 341, 256) == (256, 170)  # 170.5 rounds half to even
    assert I.fit_longest(1000, 3, 16) == (16, 1)  # never below one pixel
    assert I.fit_longest(7, 7, 7) == (7, 7)


def test_preprocess_deprocess_roundtrip():
    img = np.random.default_rng(4).random((5, 6, 3)).astype(np.float32)
    x = I.preprocess(img)
    assert x.shape == (1, 3, 5, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, 1, 2, 3], (img[2, 3, 1] - 0.456) / 0.224, rtol=1e-6)
    np.testing.assert_allclose(I.deprocess(x), img, atol=1e-6)
    batch = np.stack([img, 1 - img])
    xb = I.preprocess(batch)
    assert xb.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(I.deprocess(xb), batch, atol=1e-6)
    assert I.preprocess(img.astype(np.float64)).dtype == np.float64
    np.testing.assert_allclose(I.preprocess(I.to_uint8(img)), I.preprocess(I.to_uint8(img) / 255.0), atol=1e-6)
    assert I.deprocess(x * 100).max() == 1.0  # clipped


def test_preprocess_backward_is_the_adjoint():
    rng = np.random.default_rng(5)
    a = rng.random((4, 3, 3))  # float64
    b = rng.standard_normal((1, 3, 4, 3))
    lhs = np.sum((I.preprocess(a) - I.preprocess(np.zeros_like(a))) * b)
    rhs = np.sum(a * I.preprocess_backward(b))
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))
    assert I.preprocess_backward(b).shape == (4, 3, 3)
    assert I.preprocess_backward(b, batch=True).shape == (1, 4, 3, 3)
    bb = rng.standard_normal((2, 3, 4, 3))
    ab = rng.random((2, 4, 3, 3))
    lhs = np.sum((I.preprocess(ab) - I.preprocess(np.zeros_like(ab))) * bb)
    assert abs(lhs - np.sum(ab * I.preprocess_backward(bb))) < 1e-12 * max(1.0, abs(lhs))


# --------------------------------------------------------------------------------------
# Colour preservation
# --------------------------------------------------------------------------------------


def test_transfer_luminance_keeps_chroma_and_takes_luminance():
    rng = np.random.default_rng(6)
    content = (0.35 + 0.3 * rng.random((8, 9, 3))).astype(np.float32)
    stylized = (0.35 + 0.3 * rng.random((8, 9, 3))).astype(np.float32)
    out = I.transfer_luminance(content, stylized)
    assert out.shape == content.shape and out.dtype == np.float32
    yo, yc, ys = I.rgb_to_yiq(out), I.rgb_to_yiq(content), I.rgb_to_yiq(stylized)
    np.testing.assert_allclose(yo[..., 0], ys[..., 0], atol=1e-5)
    np.testing.assert_allclose(yo[..., 1:], yc[..., 1:], atol=1e-5)
    gray = np.repeat(content[..., :1], 3, axis=2)  # a gray content gives a gray result
    out = I.transfer_luminance(gray, stylized)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)
    with pytest.raises(ValueError):
        I.transfer_luminance(content, stylized[:4])


def test_match_color_histogram_matches_mean_and_covariance():
    rng = np.random.default_rng(7)
    mix = np.array([[1.0, 0.3, 0.0], [0.2, 1.0, 0.4], [0.0, 0.5, 1.0]])
    source = (0.5 + 0.08 * rng.standard_normal((30, 20, 3)) @ mix).clip(0, 1).astype(np.float32)
    target = (0.4 + 0.05 * rng.standard_normal((25, 16, 3)) @ mix.T + [0.1, 0.0, -0.1]).astype(np.float32)
    out = I.match_color_histogram(source, target)
    assert out.shape == source.shape and out.dtype == np.float32
    assert 0.0 < out.min() and out.max() < 1.0  # no clipping, so the moments are exact
    po, pt = out.reshape(-1, 3).astype(np.float64), target.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(po.mean(0), pt.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.cov(po, rowvar=False, bias=True), np.cov(pt, rowvar=False, bias=True), atol=1e-6)
    flat = I.match_color_histogram(np.full((4, 4, 3), 0.2, np.float32), target)  # zero covariance
    np.testing.assert_allclose(flat, np.broadcast_to(pt.mean(0), flat.shape), atol=1e-5)
