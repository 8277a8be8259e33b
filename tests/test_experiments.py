"""minnst.experiments: the helpers against independent computations, a tiny real run of
an experiment end to end (figure ≤ 300 KB, record that matches it), and the CLI's errors."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from minnst import experiments, images
from minnst.procedural import stained_glass


@pytest.fixture
def data(tmp_path):
    """A data folder like ../shared/data: content/ and styles/ with one image each."""
    rng = np.random.default_rng(0)
    (tmp_path / "content").mkdir()
    (tmp_path / "styles").mkdir()
    photo = np.clip(np.linspace(0, 1, 40)[None, :, None] + 0.1 * rng.random((30, 40, 3)), 0, 1)
    images.save_image(tmp_path / "content" / "photo.png", photo)
    images.save_image(tmp_path / "styles" / "art.png", stained_glass(32, 32, seed=1))
    return tmp_path


def test_psnr_matches_its_definition():
    rng = np.random.default_rng(1)
    a = rng.random((8, 9, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    mse = sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size
    assert experiments.psnr(a, b) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert experiments.psnr(a, a) == math.inf


def test_square_crops_the_centre():
    img = np.zeros((10, 20, 3), np.float32)
    img[:, 5:15] = 1.0  # the central 10 × 10 square is white, the sides black
    assert np.allclose(experiments.square(img, 10), 1.0)
    assert experiments.square(img, 4).shape == (4, 4, 3)


def test_content_experiment_end_to_end(data, tmp_path, capsys, vgg16_path):
    out = tmp_path / "out"
    code = experiments.main(["content", "--data", str(data), "--content", "photo.png", "--size", "24",
                             "--iterations", "3", "--output-dir", str(out), "--quiet"])
    assert code == 0
    fig = out / "content.jpg"
    assert 0 < fig.stat().st_size <= experiments.MAX_JPEG_BYTES
    assert Image.open(fig).format == "JPEG"
    rec = json.loads((out / "content.json").read_text())
    assert rec["size"] == 24 and rec["iterations"] == 3
    assert rec["command"].startswith("python -m minnst.experiments content --data")
    assert [r["layer"] for r in rec["results"]] == list(experiments.LAYERS)
    for r in rec["results"]:
        assert math.isfinite(r["psnr_db"]) and r["loss"] > 0


def test_lbfgs_on_the_training_objective_lowers_it(vgg16_path):
    from minnst.train_fast import TrainingLoss
    from minnst.vgg import VGG16

    vgg = VGG16.load(vgg16_path, pooling="max")
    loss = TrainingLoss(vgg, stained_glass(24, 24, seed=2), style_layers=("relu1_2", "relu2_2"))
    rng = np.random.default_rng(3)
    photo = rng.random((20, 20, 3)).astype(np.float32)
    y0 = rng.uniform(0, 255, (1, 3, 20, 20)).astype(np.float32)
    seen = []
    curve = experiments.lbfgs_pixels(loss, photo, y0, 6, lambda k, v, z: seen.append((k, v, z.min(), z.max())))
    assert len(curve) == 6  # the whole budget: no early "convergence" on a tiny gradient
    first = float(loss(y0, photo[None])[0])
    assert len(curve) == len(seen) >= 3 and [k for k, *_ in seen] == list(range(1, len(seen) + 1))
    assert curve[-1] < 0.5 * first and all(b <= a * (1 + 1e-6) for a, b in zip(curve, curve[1:]))
    assert all(0 <= lo and hi <= 255 for *_, lo, hi in seen)  # the bounds hold


@pytest.mark.parametrize("args, needle", [
    (["nope"], "invalid choice"),
    (["content", "--data", "/no/such/dir"], "not found"),
    (["content", "--size", "0"], "size"),
    (["content", "--iterations", "0"], "--iterations"),
])
def test_bad_arguments_are_one_line_exit_2(args, needle, capsys):
    try:
        code = experiments.main(args)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_missing_image_is_one_line_exit_2(data, tmp_path, capsys):
    code = experiments.main(["style", "--data", str(data), "--content", "photo.png", "--style", "missing.jpg",
                             "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "missing.jpg not found" in err and len(err.splitlines()) == 1



def test_fast_styles_experiment_end_to_end(data, tmp_path, vgg16_path):
    """A tiny two-style model trained for 2 steps: per style, the recorded objective, the
    median iterations to match, a figure ≤ 300 KB and a record."""
    from minnst.train_fast import TrainConfig, train

    rng = np.random.default_rng(4)
    (data / "train").mkdir()
    for i in range(experiments.HELD_OUT_FROM + 1):  # empty stand-ins; only the held-out one is read
        (data / "train" / f"{i + 1:06d}.jpg").touch()
    images.save_image(data / "train" / f"{experiments.HELD_OUT_FROM + 1:06d}.jpg", rng.random((30, 30, 3)))
    for name in ("tubingen.jpg", "taj_mahal.jpg", "cat.jpg"):
        images.save_image(data / "content" / name, rng.random((28, 36, 3)))
    images.save_image(data / "styles" / "other.png", rng.random((30, 30, 3)))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        images.save_image(photos / f"p{i}.png", rng.random((32, 32, 3)))
    cfg = TrainConfig(style=(str(data / "styles" / "art.png"), str(data / "styles" / "other.png")),
                      dataset=str(photos), output=str(tmp_path / "many.h5"), run_dir=str(tmp_path / "run"),
                      image_size=32, batch_size=2, width=0.125, iterations=2, sample_every=0, device="cpu",
                      quiet=True, style_layers=("relu1_2", "relu2_2"))
    train(cfg, log=lambda *a: None)
    out = tmp_path / "out"
    code = experiments.main(["fast-styles", "--data", str(data), "--model", str(tmp_path / "many.h5"),
                             "--size", "24", "--iterations", "4", "--output-dir", str(out), "--quiet"])
    assert code == 0
    assert 0 < (out / "fast-styles.jpg").stat().st_size <= experiments.MAX_JPEG_BYTES
    rec = json.loads((out / "fast-styles.json").read_text())
    assert [r["style"] for r in rec["results"]] == ["art", "other"] and rec["target"] == 50
    for r in rec["results"]:
        assert len(r["photos"]) == 4 and r["photos"][-1]["photo"].startswith("train/")
        its = [p["lbfgs_iterations_to_match"] or 5 for p in r["photos"]]
        assert r["median_iterations_to_match"] == float(np.median(its))
        for p in r["photos"]:  # the photo's own loss: L-BFGS reaches the lower one no sooner
            a, b = p["lbfgs_iterations_to_match_photo"], p["lbfgs_iterations_to_match"]
            if a and b:
                assert (a <= b) == (p["photo_loss"] >= p["fast_loss"]) or a == b
    # "fast" on a many-style model is the same experiment, under its own name
    assert experiments.main(["fast", "--data", str(data), "--model", str(tmp_path / "many.h5"), "--size", "24",
                             "--iterations", "4", "--output-dir", str(out), "--quiet"]) == 0
    again = json.loads((out / "fast.json").read_text())
    def untimed(results):
        return [{**r, "photos": [{k: v for k, v in p.items() if "seconds" not in k} for p in r["photos"]]}
                for r in results]

    assert (out / "fast.jpg").is_file() and untimed(again["results"]) == untimed(rec["results"])
    # a one-style model is refused with one line
    assert experiments.main(["fast-styles", "--data", str(data), "--size", "24", "--quiet",
                             "--output-dir", str(out)]) == 2
