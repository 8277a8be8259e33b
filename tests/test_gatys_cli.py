"""``python -m minnst.gatys`` as a user meets it: outputs and metadata, reproducibility,
odd image modes, and a batch of bad inputs (one line on stderr, exit 2, no traceback)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minnst import gatys, images
from minnst.gatys import cli as gatys_cli

# Tiny and shallow, so each run is a fraction of a second after VGG16 loads.
FAST = ["--size", "32", "--iterations", "3", "--content-layers", "relu1_1",
        "--style-layers", "relu1_1,relu2_1", "--quiet", "--device", "cpu"]


@pytest.fixture
def pics(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:48] / 48
    content = np.stack([x, y, 0.5 + 0.4 * np.sin(8 * x)], -1)
    style = rng.random((36, 36, 3))
    paths = {"content": tmp_path / "content.png", "style": tmp_path / "style.jpg"}
    images.save_image(paths["content"], content)
    images.save_image(paths["style"], style)
    return paths


def run_main(argv, capsys):
    code = gatys_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------ a run and its files


def test_run_writes_image_log_curve_and_metadata(pics, tmp_path, capsys, vgg16_path):
    out = tmp_path / "out" / "result.png"
    code, stdout, err = run_main(["--content", pics["content"], "--style", pics["style"], "--output", out,
                                  "--seed", "5", "--save-every", "2", *FAST], capsys)
    assert code == 0, err
    assert out.is_file() and str(out) in stdout
    img = images.load_image(out)
    assert img.shape == (27, 32, 3)  # 40×48 content, longest side 32
    log = [json.loads(line) for line in (tmp_path / "out" / "result.losses.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log] == [1, 2, 3]
    assert {"loss", "content", "style", "tv", "best", "seconds", "style_layers"} <= set(log[0])
    assert Image.open(tmp_path / "out" / "result.losses.png").format == "PNG"
    assert (tmp_path / "out" / "result_0002.png").is_file()
    meta = images.read_png_metadata(out)
    assert meta["minnst-seed"] == "5"
    config = json.loads(meta["minnst-config"])
    assert config["seed"] == 5 and config["size"] == 32 and config["style_layers"] == ["relu1_1", "relu2_1"]
    assert config["style_weight"] == gatys.DEFAULT_STYLE_WEIGHT["gatys"]
    assert json.loads(meta["minnst-inputs"])["styles"][0]["sha256"]
    assert json.loads(meta["minnst-result"])["iterations"] == 3


def test_same_seed_gives_byte_identical_png(pics, tmp_path, capsys, vgg16_path):
    outs = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    for out, seed in zip(outs, (1, 1, 2)):
        code, _, err = run_main(["--content", pics["content"], "--style", pics["style"], "--output", out,
                                 "--seed", seed, *FAST], capsys)
        assert code == 0, err
    a, b, c = (p.read_bytes() for p in outs)
    assert a == b
    assert a != c


def test_options_run_together(pics, tmp_path, capsys, vgg16_path):
    """Two blended styles, coarse-to-fine, Adam, colour preservation, init image, TV, johnson."""
    out = tmp_path / "multi.jpg"
    code, _, err = run_main(["--content", pics["content"], "--style", pics["style"], pics["content"],
                             "--style-blend-weights", "3,1", "--scales", "24", "32", "--optimizer", "adam",
                             "--learning-rate", "0.05", "--preserve-colors", "luminance",
                             "--init-image", pics["style"], "--tv-weight", "0.1",
                             "--normalization", "johnson", "--pooling", "max", "--style-scale", "0.8",
                             "--output", out, *FAST], capsys)
    assert code == 0, err
    assert images.load_image(out).shape == (27, 32, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_odd_image_modes_are_converted(pics, tmp_path, capsys, vgg16_path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray((rng.random((30, 34, 3)) * 255).astype(np.uint8), "RGB")
    if mode == "I;16":
        odd = Image.fromarray((rng.random((30, 34)) * 65535).astype(np.uint16))
        path = tmp_path / "odd.png"
    elif mode == "CMYK":
        odd, path = rgb.convert("CMYK"), tmp_path / "odd.jpg"
    else:
        odd, path = rgb.convert(mode), tmp_path / "odd.png"
    odd.save(path)
    code, _, err = run_main(["--content", path, "--style", path, "--output", tmp_path / "o.png", *FAST], capsys)
    assert code == 0, err


def test_no_arguments_means_the_demo():
    cfg, demo = gatys_cli.config_from_args([])
    assert demo and cfg.size == gatys_cli.DEMO_SIZE and cfg.iterations == gatys_cli.DEMO_ITERATIONS
    assert cfg.content is None and cfg.style == []
    assert gatys_cli.demo_content_path().is_file()
    cfg, demo = gatys_cli.config_from_args(["--content", "x.png"])
    assert not demo and cfg.size == 512 and cfg.iterations == 500


def test_iterations_one_per_scale():
    cfg, _ = gatys_cli.config_from_args(["--content", "x.png", "--scales", "64,128", "--iterations", "30,10"])
    assert cfg.scale_iterations == [30, 10] and cfg.total_iterations == 40
    cfg, _ = gatys_cli.config_from_args(["--content", "x.png", "--scales", "64,128", "--iterations", "7"])
    assert cfg.scale_iterations == [7, 7]
    with pytest.raises(gatys_cli.UsageError, match="one per scale"):
        gatys_cli.config_from_args(["--content", "x.png", "--scales", "64,128", "--iterations", "3,2,1"])


def test_memory_refusal_suggests_a_smaller_size(pics, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gatys_cli, "available_memory", lambda: 600 * 2**20)
    code, _, err = run_main(["--content", pics["content"], "--style", pics["style"], "--size", "2048",
                             "--output", tmp_path / "o.png", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "memory", "--size", "--scales")
    assert not (tmp_path / "o.png").exists()


def test_tile_auto_tiles_only_when_the_whole_image_does_not_fit(pics, tmp_path, capsys, monkeypatch, vgg16_path):
    """--tile auto (the default): untiled when it fits; with memory between the tiled and the
    untiled estimates it picks a tile, says so, records it, and the run completes."""

    args = ["--content", pics["content"], "--style", pics["style"], "--size", "256", "--iterations", "2",
            "--content-layers", "relu1_1", "--style-layers", "relu1_1,relu2_1", "--device", "cpu",
            "--print-every", "0"]
    cfg = gatys_cli.parse([str(a) for a in args]).cfg
    whole, tiled = (gatys_cli._estimate_for((40, 48), cfg, [(36, 36)], 256, "cpu", t)["total"] for t in (None, 128))
    room = gatys_cli.AUTO_TILE_HEADROOM  # auto leaves a tenth of the free memory alone
    assert tiled / room < whole
    monkeypatch.setattr(gatys_cli, "available_memory", lambda: int((whole + tiled / room) / 2))
    code, _, err = run_main([*args, "--output", tmp_path / "a.png"], capsys)
    assert code == 0 and "--tile 128" in err, err
    config = json.loads(images.read_png_metadata(tmp_path / "a.png")["minnst-config"])
    assert config["tile"] == 128
    # --tile off: the same memory is refused; with room, auto does not tile
    code, _, err = run_main([*args, "--output", tmp_path / "b.png", "--tile", "off"], capsys)
    assert_one_line_error(code, err, "memory")
    monkeypatch.setattr(gatys_cli, "available_memory", lambda: 2 * whole)
    code, _, err = run_main([*args, "--output", tmp_path / "c.png"], capsys)
    assert code == 0 and "--tile" not in err
    assert json.loads(images.read_png_metadata(tmp_path / "c.png")["minnst-config"])["tile"] is None
    # room for the whole image, but not with the headroom: auto tiles; off runs it whole
    monkeypatch.setattr(gatys_cli, "available_memory", lambda: int(whole / (1 + room) * 2))
    code, _, err = run_main([*args, "--output", tmp_path / "d.png"], capsys)
    assert code == 0 and "--tile" in err, err
    code, _, err = run_main([*args, "--output", tmp_path / "e.png", "--tile", "off"], capsys)
    assert code == 0 and json.loads(images.read_png_metadata(tmp_path / "e.png")["minnst-config"])["tile"] is None


def test_tile_auto_tiles_only_the_scales_that_need_it(pics, tmp_path, capsys, monkeypatch, vgg16_path):
    """With scales, --tile auto tiles only the scales whose whole image does not fit: the
    note names them, the output records one tile per scale, and the printed estimate is
    the largest over the scales."""
    args = ["--content", pics["content"], "--style", pics["style"], "--scales", "128,256", "--iterations", "2",
            "--content-layers", "relu1_1", "--style-layers", "relu1_1,relu2_1", "--device", "cpu",
            "--print-every", "0", "--output", tmp_path / "m.png"]
    args = [str(a) for a in args]
    cfg = gatys_cli.parse(args).cfg
    hws = (40, 48), [(36, 36)]

    def total(size, tile=None):
        return gatys_cli._estimate_for(hws[0], cfg, hws[1], size, "cpu", tile)["total"]

    room = gatys_cli.AUTO_TILE_HEADROOM  # auto leaves a tenth of the free memory alone
    assert total(128) < total(256, 128) / room < total(256)
    have = int((total(256, 128) / room + total(256)) / 2)
    monkeypatch.setattr(gatys_cli, "available_memory", lambda: have)
    code, _, err = run_main(args, capsys)
    assert code == 0, err
    assert "128×128 tiles at scale 256, whole at 128" in err, err
    config = json.loads(images.read_png_metadata(tmp_path / "m.png")["minnst-config"])
    assert config["tile"] == [None, 128] and config["scales"] == [128, 256]
    assert gatys_cli.format_bytes(max(total(128), total(256, 128))) in err


# The peak resident memory of the child alone: VmHWM, its address space's high-water
# mark (new at exec). Not ru_maxrss, which counts the parent's RSS at the fork: this
# test's, which runs inside pytest.
PEAK_RSS = """import runpy, sys
sys.argv = ["minnst.gatys", *sys.argv[1:]]
try:
    runpy.run_module("minnst.gatys", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc/self/status (VmHWM)")
@pytest.mark.parametrize("tile", ["off", "64"])
def test_memory_estimate_against_peak_rss(pics, tmp_path, vgg16_path, tile):
    """The pre-flight's estimate against the peak resident memory of the same command, in
    a process of its own (the kernel's count, VmHWM), whole and in tiles, with the default
    layers: never under it, and at most 1.3 times it (at these sizes the runtime weighs;
    measured at print size: docs/gatys.md, "Memory and time")."""
    big = tmp_path / "big.png"
    images.save_image(big, images.resize(images.load_image(pics["content"]), shape=(192, 230)))
    args = ["--content", big, "--style", pics["style"], "--size", "230", "--iterations", "2",
            "--lbfgs-memory", "1", "--tile", tile, "--device", "cpu", "--quiet", "--output", tmp_path / "r.png"]
    args = [str(a) for a in args]
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    cfg = gatys_cli.parse(args).cfg
    est = gatys_cli._run_estimate((192, 230), cfg, [(36, 36)], "cpu")["total"]
    assert peak <= est <= 1.3 * peak, (peak / 2**20, est / 2**20)


def test_tile_auto_shortens_the_lbfgs_history_or_takes_adam(pics, tmp_path, capsys, monkeypatch, vgg16_path):
    """When even tiles do not fit, --tile auto keeps the longest L-BFGS-B history that fits,
    else switches to Adam, and says which; the output records the choice. (More iterations
    than pairs: a shorter run writes fewer pairs, which the estimate counts.)"""
    from minnst.memory import estimate_gatys_memory

    args = ["--content", pics["content"], "--style", pics["style"], "--size", "256", "--iterations", "12",
            "--content-layers", "relu1_1", "--style-layers", "relu1_1", "--device", "cpu", "--print-every", "0"]
    hw, style_hw, layers = (213, 256), [(256, 256)], (["relu1_1"], ["relu1_1"])

    def total(**kw):
        return estimate_gatys_memory(*hw, *layers, style_hw, tile=64, **kw)["total"]

    room = gatys_cli.AUTO_TILE_HEADROOM  # auto chooses within this share of the free memory
    for available, key, value in (((total(lbfgs_memory=4) + total(lbfgs_memory=5)) / 2, "lbfgs_memory", 4),
                                  ((total(optimizer="adam") + total(lbfgs_memory=3)) / 2, "optimizer", "adam")):
        monkeypatch.setattr(gatys_cli, "available_memory", lambda a=available: int(a / room))
        out = tmp_path / f"{key}.png"
        code, _, err = run_main([*args, "--output", out], capsys)
        assert code == 0, err
        config = json.loads(images.read_png_metadata(out)["minnst-config"])
        assert config[key] == value and config["tile"] in (64, 128), (config, err)
        assert f"--{key.replace('_', '-')} {value}" in err


def test_interrupt_saves_and_exits_130(pics, tmp_path, capsys, monkeypatch, vgg16_path):
    real = gatys.Objective.loss_and_grad
    calls = {"n": 0}

    def patched(self, x):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(gatys.Objective, "loss_and_grad", patched)
    out = tmp_path / "i.png"
    code, _, err = run_main(["--content", pics["content"], "--style", pics["style"], "--output", out,
                             *FAST, "--iterations", "50"], capsys)
    assert code == 130 and out.is_file() and "interrupted" in err
    assert json.loads(images.read_png_metadata(out)["minnst-result"])["stop_reason"] == "interrupted"


def test_non_finite_loss_keeps_last_good_image(pics, tmp_path, capsys, monkeypatch, vgg16_path):
    real = gatys.Objective.loss_and_grad
    calls = {"n": 0}

    def patched(self, x):
        calls["n"] += 1
        loss, grad = real(self, x)
        return (float("inf") if calls["n"] > 3 else loss), grad

    monkeypatch.setattr(gatys.Objective, "loss_and_grad", patched)
    out = tmp_path / "n.png"
    code, _, err = run_main(["--content", pics["content"], "--style", pics["style"], "--output", out,
                             *FAST, "--iterations", "50"], capsys)
    assert_one_line_error(code, err, "non-finite", "saved the last good image")
    assert out.is_file()


# ------------------------------------------------------------------------ bad input


def _bad_files(tmp_path, pics):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pics["content"].read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return {"missing": tmp_path / "nope.png", "text": text, "truncated": truncated, "empty": empty,
            "dir": tmp_path}


@pytest.mark.parametrize("which", ["missing", "text", "truncated", "empty", "dir"])
@pytest.mark.parametrize("role", ["--content", "--style", "--init-image"])
def test_bad_files(pics, tmp_path, capsys, which, role):
    bad = _bad_files(tmp_path, pics)[which]
    argv = {"--content": ["--content", bad, "--style", pics["style"]],
            "--style": ["--content", pics["content"], "--style", pics["style"], bad],
            "--init-image": ["--content", pics["content"], "--style", pics["style"], "--init-image", bad]}[role]
    code, _, err = run_main([*argv, "--output", tmp_path / "o.png", *FAST], capsys)
    assert_one_line_error(code, err)
    assert not (tmp_path / "o.png").exists()


BAD_ARGS = [
    (["--size", "0"], "size"),
    (["--size", "abc"], "--size"),
    (["--size", "100000"], "size"),
    (["--size", "12.5"], "--size"),
    (["--iterations", "0"], "--iterations"),
    (["--iterations", "-5"], "--iterations"),
    (["--style-weight", "-1"], "--style-weight"),
    (["--style-weight", "nan"], "--style-weight"),
    (["--content-weight", "inf"], "--content-weight"),
    (["--tv-weight", "x"], "--tv-weight"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--style-scale", "0"], "--style-scale"),
    (["--style-scale", "0.01"], "style images"),
    (["--time-budget", "-3"], "--time-budget"),
    (["--seed", "-1"], "--seed"),
    (["--scales", "64,32"], "--scales"),
    (["--scales", "32,a"], "--scales"),
    (["--content-layers", "relu9_1"], "relu9_1"),
    (["--style-layers", "relu1_1,conv6_1"], "conv6_1"),
    (["--style-layers", "relu1_1,relu1_1"], "twice"),
    (["--style-layer-weights", "1,2,3"], "--style-layer-weights"),
    (["--style-blend-weights", "1,2"], "--style-blend-weights"),
    (["--style-blend-weights", "0"], "--style-blend-weights"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--normalization", "l2"], "--normalization"),
    (["--init", "image"], "--init-image"),
    (["--init", "content", "--init-image", "x.png"], "--init-image"),
    (["--output", "result.txt"], ".png or .jpg"),
    (["--no-such-flag"], "unrecognized"),
    (["--device", "tpu"], "--device"),
    (["--size", "24", "--style-layers", "pool5"], "pool5"),  # 24 px halved five times: nothing left
    (["--output", "afile/o.png"], "is a file"),  # under a regular file (made by the test)
]


@pytest.mark.parametrize("args,needle", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments(pics, tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file")
    base = ["--content", pics["content"], "--style", pics["style"], "--output", tmp_path / "o.png",
            "--quiet", "--device", "cpu"]
    code, _, err = run_main([*base, *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o.png").exists() and not list(tmp_path.glob("*.losses.*"))


def test_save_every_names_and_sizes_are_those_the_help_gives(pics, tmp_path, capsys, vgg16_path):
    """--save-every writes <output stem>_<iteration, 4 digits><output suffix>, the iterations
    counted on over --scales, each image at the size of the scale it was saved in."""
    help_text = " ".join(gatys_cli.build_parser().format_help().split())
    assert "<output stem>_<iteration, 4 digits><output suffix> (out.png: out_0050.png" in help_text
    assert "during a coarse scale has that scale's size" in help_text
    out = tmp_path / "run.jpg"
    argv = ["--content", pics["content"], "--style", pics["style"], "--output", out, "--scales", "24,32",
            "--iterations", "2", "--save-every", "1", "--content-layers", "relu1_1", "--style-layers", "relu1_1",
            "--device", "cpu"]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    assert "images saved before the last scale have that scale's size (24 px)" in err
    saved = sorted(p.name for p in tmp_path.glob("run_*.jpg"))
    assert saved == ["run_0001.jpg", "run_0002.jpg", "run_0003.jpg", "run_0004.jpg"]
    assert [max(Image.open(tmp_path / n).size) for n in saved] == [24, 24, 32, 32]


def test_subprocess_bad_input_and_help(tmp_path):
    """A real process: no traceback, exit 2, one line; --help works."""
    root = Path(__file__).resolve().parents[1]
    run = lambda *a: subprocess.run([sys.executable, "-m", "minnst.gatys", *map(str, a)],  # noqa: E731
                                    cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                    env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    p = run("--content", tmp_path / "missing.jpg")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "missing.jpg" in p.stderr
    p = run("--help")
    assert p.returncode == 0 and "--style-blend-weights" in p.stdout and "--preserve-colors" in p.stdout


def test_real_ctrl_c_saves_the_best_image(pics, tmp_path, vgg16_path):
    """SIGINT to a running process: exit 130, the image and the log are there."""
    import os
    import signal
    import time

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "sig.png"
    log = tmp_path / "sig.losses.jsonl"
    env = dict(os.environ, PYTHONPATH=str(root))
    p = subprocess.Popen([sys.executable, "-m", "minnst.gatys", "--content", str(pics["content"]),
                          "--style", str(pics["style"]), "--output", str(out), *FAST, "--iterations", "100000"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         # a shell's background job ignores SIGINT, and children inherit that
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "saved the best image" in err
    assert out.is_file() and len(log.read_text().splitlines()) >= 2


def test_skip_existing_leaves_a_single_output_alone(pics, tmp_path, capsys):
    out = tmp_path / "done.png"
    out.write_bytes(b"an earlier result")
    code, stdout, err = run_main(["--content", pics["content"], "--style", pics["style"], "--output", out,
                                  "--skip-existing", *FAST], capsys)
    assert code == 0 and "skipped" in stdout, err
    assert out.read_bytes() == b"an earlier result" and not (tmp_path / "done.losses.jsonl").exists()
