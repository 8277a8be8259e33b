"""The stylise command line: a file, a folder (tree mirrored, unreadable files reported),
--size, the defaults (shipped model, demo photo), checkpoints as models, and bad input."""
import numpy as np
import pytest
from PIL import Image

from minnst import stylize
from minnst.transformer import TransformerConfig, TransformerNet


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    import scipy.linalg.blas  # noqa: F401  (load scipy's BLAS first, so the limit covers it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    net = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1), seed=0)
    return net.save(d / "tiny.h5", meta={"style": "noise.png"}, dtype=np.float16)


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "photos"
    (d / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (21, 34, 3)).astype(np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)).save(d / "nested" / "b.jpg")
    return d


def test_single_file_any_size(model, photos, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert stylize.main(["--model", str(model), "--input", str(photos / "a.png"), "--output", str(out)]) == 0
    assert Image.open(out).size == (34, 21)
    assert "wrote" in capsys.readouterr().out
    # --size resizes the longest side; an output folder gets <stem>_<model>.jpg
    assert stylize.main(["--model", str(model), "--input", str(photos / "a.png"), "--output", str(tmp_path),
                         "--size", "64"]) == 0
    assert Image.open(tmp_path / "a_tiny.jpg").size == (64, 40)


def test_folder_mirrors_the_tree_and_reports_bad_files(model, photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "styled"
    assert stylize.main(["--model", str(model), "--input", str(photos), "--output", str(out), "--quiet"]) == 2
    assert (out / "a_tiny.jpg").is_file() and (out / "nested" / "b_tiny.jpg").is_file()
    assert Image.open(out / "nested" / "b_tiny.jpg").size == (30, 40)
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 3 images" in err and "Traceback" not in err


def test_defaults_shipped_model_and_demo_photo(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stylize, "default_model_path", lambda: model)
    assert stylize.main([]) == 0
    out = tmp_path / "minnst_out" / "grace_hopper_tiny.jpg"
    assert out.is_file()
    assert Image.open(out).size == Image.open(stylize.demo_photo()).size


def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stylize, "checkout_weights_dir", lambda: None)
    monkeypatch.setenv("MINNST_HOME", str(tmp_path))
    assert stylize.main(["--input", str(tmp_path / "x.jpg")]) == 2
    assert "--model" in capsys.readouterr().err


def test_checkpoint_works_as_a_model(tmp_path, photos):
    from minnst.data import BatchSampler
    from minnst.optim import Adam
    from minnst.train_fast import TrainConfig, save_checkpoint

    net = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1))
    ckpt = save_checkpoint(tmp_path / "checkpoint.h5", net, Adam(net.params), BatchSampler(4, 2), 7,
                           TrainConfig(style="s.jpg", dataset="d"))
    back = stylize.load_network(ckpt)
    assert back.meta == {"style": "s.jpg", "iterations": 7}
    img = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.stylize(img), net.stylize(img))


def test_bad_input_is_one_line_exit_2(model, photos, tmp_path, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_text("junk")
    cases = [
        ["--model", str(junk), "--input", str(photos / "a.png")],
        ["--model", str(tmp_path / "none.h5"), "--input", str(photos / "a.png")],
        ["--model", str(model), "--input", str(tmp_path / "none.png")],
        ["--model", str(model), "--input", str(photos), "--output", str(tmp_path / "x.jpg")],
        ["--model", str(model), "--input", str(photos / "a.png"), "--size", "5"],
        ["--model", str(model), "--input", str(junk)],
        ["--model", str(model), "--input", str(photos / "a.png"), "--output", str(tmp_path / "o.gif")],
    ]
    for argv in cases:
        assert stylize.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A tiny three-style network whose styles differ (random γ, β per style)."""
    d = tmp_path_factory.mktemp("many")
    net = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1, styles=("a", "b", "c")), seed=0)
    rng = np.random.default_rng(1)
    for k, v in net.state_dict().items():
        if v.ndim == 2:  # a conditional norm's (S, C) γ or β
            v[...] = rng.normal(1.0 if k.endswith("weight") else 0.0, 0.5, v.shape)
    return net.save(d / "many.h5")


def test_list_styles_and_choose_or_blend(many, photos, tmp_path, capsys):
    assert stylize.main(["--model", str(many), "--list-styles"]) == 0
    assert capsys.readouterr().out.split() == ["a", "b", "c"]
    src = photos / "a.png"
    outs = {}
    for style in ("a", "b", "a=0.5,b=0.5", "b=1,a=1"):
        out = tmp_path / f"{style}.png"
        assert stylize.main(["--model", str(many), "--input", str(src), "--output", str(out),
                             "--style", style]) == 0
        outs[style] = np.asarray(Image.open(out), dtype=np.float64)
    assert np.abs(outs["a"] - outs["b"]).mean() > 1.0           # the styles differ
    assert np.array_equal(outs["a=0.5,b=0.5"], outs["b=1,a=1"])  # weights are normalised
    net = TransformerNet.load(many)
    img = np.asarray(Image.open(src), dtype=np.float32) / 255
    blend = net.stylize(img, style={"a": 0.5, "b": 0.5})
    assert np.abs(blend * 255 - outs["a=0.5,b=0.5"]).max() <= 1.0  # the CLI is the API
    # no --style: the first style
    out = tmp_path / "default.png"
    assert stylize.main(["--model", str(many), "--input", str(src), "--output", str(out)]) == 0
    assert np.array_equal(np.asarray(Image.open(out), dtype=np.float64), outs["a"])
    # into a folder: the default names carry the style, so styles do not overwrite each other
    for style in ("b", "a=0.6,c=0.4"):
        assert stylize.main(["--model", str(many), "--input", str(src), "--output", str(tmp_path / "d"),
                             "--style", style]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a_many_a0.6+c0.4.jpg", "a_many_b.jpg"]


@pytest.mark.parametrize("style,needle", [("zz", "unknown style"), ("a=x", "NAME=WEIGHT"),
                                          ("a=-1", "weight"), ("a=0,b=0", "not all zero")])
def test_bad_style_is_one_line_exit_2(many, photos, tmp_path, capsys, style, needle):
    out = tmp_path / "o.png"
    assert stylize.main(["--model", str(many), "--input", str(photos / "a.png"), "--output", str(out),
                         "--style", style]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and not out.exists()


def test_one_style_model_refuses_another_style(model, photos, tmp_path, capsys):
    assert stylize.main(["--model", str(model), "--input", str(photos / "a.png"), "--output",
                         str(tmp_path / "o.png"), "--style", "udnie"]) == 2
    assert "one style" in capsys.readouterr().err


def test_memory_refusal_names_a_size_that_fits(model, photos, tmp_path, capsys, monkeypatch):
    """An image whose estimate exceeds the memory there is is refused before any work, with
    the estimate and a --size that fits; that size then runs (issue 13)."""
    import re

    from minnst.memory import estimate_stylize_memory
    from minnst.transformer import TransformerNet as Net

    net = Net.load(model)
    have = estimate_stylize_memory(net, 80, 128)["total"]  # a.png is 21×34: 80×128 at --size 128
    monkeypatch.setattr(stylize, "available_memory", lambda: have)
    out = tmp_path / "o.png"
    argv = ["--model", str(model), "--input", str(photos / "a.png"), "--output", str(out), "--device", "cpu"]
    assert stylize.main([*argv, "--size", "2048"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "memory" in err and "2048×1265" in err and not out.exists()
    fit = int(re.search(r"try --size (\d+)", err).group(1))
    assert 128 <= fit < 140  # the largest that fits: 128, or a little more (the rounding of the sides)
    assert stylize.main([*argv, "--size", str(fit)]) == 0
    assert max(Image.open(out).size) == fit
    # a folder: the largest image decides
    assert stylize.main(["--model", str(model), "--input", str(photos), "--output", str(tmp_path / "d"),
                         "--size", "1024"]) == 2
    assert "try --size" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_render_image_from_bytes_is_the_file_path(model, photos, tmp_path):
    """What a cluster task runs (the source's bytes in, the output file's bytes out, the
    network from the model file's bytes) is what loading and saving the files gives."""
    from minnst import images
    from minnst.modelfile import ModelFileError

    net = stylize.load_network(model)
    from_bytes = stylize.load_network(model.read_bytes())
    src = photos / "nested" / "b.jpg"
    for suffix in (".jpg", ".png"):
        job = stylize.ImageJob(str(src), images.read_image_bytes(src), suffix)
        out = images.save_image(tmp_path / f"ref{suffix}", net.stylize(images.load_image(src, 32)), {"k": "v"})
        assert stylize.render_image(job, from_bytes, 32, None, {"k": "v"}) == out.read_bytes()
    with pytest.raises(images.ImageError, match="not an image file .*b.jpg"):
        stylize.render_image(stylize.ImageJob(str(src), b"junk", ".jpg"), net)
    with pytest.raises(ModelFileError, match="the model sent as bytes is not an HDF5 file"):
        stylize.load_network(b"junk")
