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
