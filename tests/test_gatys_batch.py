"""Gatys batches and sweeps (``python -m minnst.gatys --content DIR --style DIR --style-weight a,b``):
names and plans (pure), serial and Dask outputs byte for byte, a batch output against a
single run, --skip-existing and Ctrl-C, failing runs among others, the contact sheet, and
usage errors. Tiny images and few iterations: the whole file takes well under a minute."""
import contextlib
import json

import numpy as np
import pytest

from minnst import contact_sheet as cs
from minnst import distributed, images
from minnst.gatys import batch
from minnst.gatys import cli as gatys_cli
from test_gatys_cli import assert_one_line_error, run_main

FAST = ["--size", "32", "--iterations", "3", "--content-layers", "relu1_1", "--style-layers", "relu1_1",
        "--quiet", "--device", "cpu"]


@pytest.fixture
def pics(tmp_path):
    """Two contents with the same stem in different folders (a 40×48 PNG, a 40×48 JPEG)
    and two 36×36 styles."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:48] / 48
    d = tmp_path / "in"
    p = {"contents": d / "contents", "styles": d / "styles",
         "a": d / "contents" / "a" / "photo.png", "b": d / "contents" / "b" / "photo.jpg",
         "noise": d / "styles" / "noise.jpg", "stripes": d / "styles" / "stripes.png"}
    images.save_image(p["a"], np.stack([x, y, 0.5 + 0.4 * np.sin(8 * x)], -1))
    images.save_image(p["b"], np.stack([y, x, 0.5 + 0.4 * np.cos(8 * y)], -1))
    images.save_image(p["noise"], rng.random((36, 36, 3)))
    images.save_image(p["stripes"], np.tile(0.5 + 0.5 * np.sin(np.arange(36) / 2)[:, None, None], (1, 36, 3)))
    return p


@pytest.fixture
def no_curves(monkeypatch):
    monkeypatch.setattr(gatys_cli, "plot_losses", lambda *a, **k: None)  # matplotlib: slow, not the point


def results(folder) -> dict:
    """``{name: bytes}`` of a batch's output images."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png")) if not p.name.endswith(".losses.png")}


def use_cluster2(monkeypatch, cluster2) -> list:
    """``--workers``/``--scheduler`` get the session's 2-process cluster; the returned list
    collects the index of every task it ran."""
    ran, real = [], cluster2.map_ordered

    def counted(fn, items, *args, **kwargs):
        for outcome in real(fn, items, *args, **kwargs):
            ran.append(outcome[0])
            yield outcome

    @contextlib.contextmanager
    def the_cluster(workers=None, scheduler=None, say=print, **_):
        yield cluster2 if workers or scheduler else None

    monkeypatch.setattr(cluster2, "map_ordered", counted)
    monkeypatch.setattr(distributed, "cluster", the_cluster)
    return ran


# ------------------------------------------------------------------------ names and plans (no VGG)


def test_values_in_names_are_short_and_read_back_exactly():
    values = (1e3, 1e4, 1e5, 3e6, 0.5, 1e-6, 0.0, 0.1 + 0.2, 1.0000001, 7)
    texts = [batch.format_value(v) for v in values]
    assert texts == ["1000", "10000", "100000", "3e+06", "0.5", "1e-06", "0", "0.30000000000000004", "1.0000001", "7"]
    assert all(float(t) == v for t, v in zip(texts, values))


def test_safe_names():
    assert batch.safe_name("starry night (1889)") == "starry_night_1889_"
    assert batch.safe_name("a/b\\c:d*e?f") == "a_b_c_d_e_f"
    assert batch.safe_name(".hidden") == "_hidden"
    assert batch.safe_name("Weiße_Nächte+1=2.v3") == "Weiße_Nächte+1=2.v3"
    assert batch.safe_name("") == "_"


def test_clashing_stems_get_their_folders_then_their_suffix():
    assert batch.unique_labels(["x/a/photo.jpg", "x/b/photo.jpg", "x/c/tree.png"]) == ["a-photo", "b-photo", "tree"]
    assert batch.unique_labels(["d/photo.jpg", "d/photo.png"]) == ["photo-jpg", "photo-png"]
    assert batch.unique_labels(["a/Photo.jpg", "b/photo.jpg"]) == ["a-Photo", "b-photo"]  # case-insensitive disks
    clash = ["x/a/photo.jpg", "x/b/photo.jpg", "x/a-photo.jpg"]  # the folder name clashes again: numbered
    assert batch.unique_labels(clash) == ["a-photo-jpg", "b-photo", "a-photo-jpg~2"]
    assert batch.unique_labels(clash) == batch.unique_labels(list(clash))  # deterministic


def test_plan_order_names_and_duplicates():
    runs = batch.plan_runs(["c/a.jpg", "c/b.jpg", "c/a.jpg"], ["s/x.png", "s/y.png"],
                           {"seed": [0, 1], "style_weight": [1e3, 1e4, 1e3]})
    assert len(runs) == 2 * 2 * 2 * 2  # a.jpg and 1e3 given twice count once
    assert [r.name for r in runs[:3]] == ["a__x__style-weight=1000__seed=0", "a__x__style-weight=1000__seed=1",
                                          "a__x__style-weight=10000__seed=0"]
    assert runs[-1].name == "b__y__style-weight=10000__seed=1"
    assert (runs[-1].row, runs[-1].style_index, runs[-1].combination) == (1, 1, 3)
    assert len({r.name for r in runs}) == len(runs)
    assert [r.name for r in batch.plan_runs(["a.jpg"], ["x.png", "y.png"])] == ["a__x", "a__y"]


@pytest.mark.parametrize("field", batch.SWEEPABLE)
def test_every_sweepable_setting_sweeps(field):
    flag = "--" + field.replace("_", "-")
    p = gatys_cli.parse(["--content", "c.png", "--style", "s.png", flag, "1,2"])
    assert p.sweeps == {field: [1, 2]}
    assert [r.name for r in batch.plan_runs(["c.png"], ["s.png"], p.sweeps)] == [
        f"c__s__{flag[2:]}=1", f"c__s__{flag[2:]}=2"]


def test_help_gives_the_naming_scheme_the_code_uses():
    text = " ".join(gatys_cli.build_parser().format_help().split())
    assert "<content>__<style>[__<setting>=<value>…].png" in text
    example = batch.plan_runs(["tubingen.jpg"], ["starry_night.jpg"], {"style_weight": [1e6]})[0].name
    assert f"e.g. {example}.png" in text


@pytest.mark.parametrize("argv,is_batch", [
    (["--content", "c.png", "--style", "s1.png", "s2.png"], False),  # one pastiche blending both styles
    (["--content", "c.png", "--style", "s1.png", "s2.png", "--batch"], True),
    (["--content", "c.png", "d.png", "--style", "s1.png"], True),
    (["--content", "c.png", "--style", "s1.png", "--seed", "0,1"], True),
    (["--content", "c.png", "--style", "s1.png", "--seed", "1,1"], False),  # one value twice: no sweep
    (["--content", "FOLDER", "--style", "s1.png"], True),
    (["--content", "c.png", "--style", "s1.png", "FOLDER"], True),
])
def test_what_makes_a_batch(tmp_path, argv, is_batch):
    (tmp_path / "f").mkdir()
    p = gatys_cli.parse([str(tmp_path / "f") if a == "FOLDER" else a for a in argv])
    assert gatys_cli._is_batch(p.args, p.sweeps) == is_batch


# ------------------------------------------------------------------------ runs


def test_serial_and_dask_batches_are_byte_identical(pics, tmp_path, capsys, monkeypatch, cluster2, no_curves,
                                                    vgg16_path):
    """2 contents × 2 styles × 2 style weights, serially here and as tasks on 2 workers."""
    argv = ["--content", pics["contents"], "--style", pics["styles"], "--style-weight", "1e3,1e5", *FAST]
    code, _, err = run_main([*argv, "--output", tmp_path / "serial"], capsys)
    assert code == 0, err
    ran = use_cluster2(monkeypatch, cluster2)
    code, _, err = run_main([*argv, "--output", tmp_path / "dask", "--workers", "2"], capsys)
    assert code == 0, err
    serial, dask = results(tmp_path / "serial"), results(tmp_path / "dask")
    assert sorted(serial) == [f"{c}__{s}__style-weight={w}.png" for c in ("a-photo", "b-photo")
                              for s in ("noise", "stripes") for w in ("1000", "100000")]
    assert sorted(ran) == list(range(8))
    assert dask == serial
    assert len(set(serial.values())) == 8  # eight different pastiches


def test_a_failing_task_on_a_worker_leaves_the_others(pics, tmp_path, capsys, monkeypatch, cluster2, no_curves,
                                                      vgg16_path):
    """A loss that overflows on a worker (β = 1e308) fails its run only; here through
    --scheduler, whose client makes no memory check (it cannot see the workers)."""
    ran = use_cluster2(monkeypatch, cluster2)
    out = tmp_path / "o"
    code, stdout, err = run_main(["--content", pics["a"], "--style", pics["noise"], "--style-weight", "1e3,1e308",
                                  *FAST, "--output", out, "--scheduler", "tcp://127.0.0.1:8786"], capsys)
    assert sorted(ran) == [0, 1]
    assert_one_line_error(code, err, "1 of 2 runs failed", "photo__noise__style-weight=1e+308", "non-finite")
    assert list(results(out)) == ["photo__noise__style-weight=1000.png"]
    assert "failed: photo__noise__style-weight=1e+308" in stdout


def test_a_batch_output_equals_the_single_run(pics, tmp_path, capsys, no_curves, vgg16_path):
    """The same pair and settings: the same bytes, metadata included."""
    pair = ["--content", pics["a"], "--style", pics["noise"], "--seed", "3", *FAST]
    code, _, err = run_main([*pair, "--style-weight", "1e5", "--output", tmp_path / "single.png"], capsys)
    assert code == 0, err
    code, _, err = run_main([*pair, "--style-weight", "1e3,1e5", "--output", tmp_path / "b"], capsys)
    assert code == 0, err
    out = tmp_path / "b" / "photo__noise__style-weight=100000.png"
    assert out.read_bytes() == (tmp_path / "single.png").read_bytes()
    meta = images.read_png_metadata(out)
    assert json.loads(meta["minnst-config"])["style_weight"] == 1e5
    assert json.loads(meta["minnst-inputs"])["styles"] == [
        {"path": str(pics["noise"]), "sha256": gatys_cli.sha256_file(pics["noise"])}]


def test_skip_existing_redoes_only_what_is_missing(pics, tmp_path, capsys, monkeypatch, vgg16_path):
    folder = tmp_path / "o"
    argv = ["--content", pics["a"], "--style", pics["styles"], *FAST, "--output", folder]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    for name in ("photo__noise", "photo__stripes"):  # each run: its image, loss log and curve
        log = (folder / f"{name}.losses.jsonl").read_text().splitlines()
        assert [json.loads(line)["iteration"] for line in log] == [1, 2, 3]
        assert (folder / f"{name}.png").is_file() and (folder / f"{name}.losses.png").is_file()
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (folder / "photo__stripes.png").unlink()
    code, out, err = run_main([*argv, "--skip-existing"], capsys)
    assert code == 0 and "wrote 1 of 2 runs" in out and "(1 already there)" in out, (out, err)
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(after) == set(before)
    assert after["photo__noise.png"] == before["photo__noise.png"]
    assert after["photo__noise.losses.jsonl"] == before["photo__noise.losses.jsonl"]

    @contextlib.contextmanager
    def no_cluster(workers=None, scheduler=None, **_):
        assert workers is None and scheduler is None, "a cluster started with nothing to do"
        yield None

    monkeypatch.setattr(distributed, "cluster", no_cluster)
    code, out, err = run_main([*argv, "--skip-existing", "--workers", "2"], capsys)
    assert code == 0 and "wrote 0 of 2 runs" in out, err


def test_workers_must_fit_in_memory_together(pics, tmp_path, capsys, monkeypatch):
    """--workers N runs N pastiches at once on this machine: refused before anything starts,
    naming a worker count that fits."""
    from minnst.memory import estimate_gatys_memory

    one = estimate_gatys_memory(27, 32, ["relu1_1"], ["relu1_1"], [(32, 32)])["total"]  # 40×48 at 32 px
    monkeypatch.setattr(gatys_cli, "available_memory", lambda: int(1.5 * one))
    monkeypatch.setattr(distributed, "cluster", None)  # never reached
    code, _, err = run_main(["--content", pics["a"], "--style", pics["styles"], *FAST, "--output", tmp_path / "o",
                             "--workers", "2"], capsys)
    assert_one_line_error(code, err, "--workers 2 runs 2 pastiches at once", "try --workers 1")
    assert not (tmp_path / "o").exists()


def test_ctrl_c_leaves_only_complete_outputs(pics, tmp_path, capsys, monkeypatch, no_curves, vgg16_path):
    real, calls = batch.run_task, []

    def interrupted_second(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(batch, "run_task", interrupted_second)
    folder = tmp_path / "o"
    code, _, err = run_main(["--content", pics["a"], "--style", pics["styles"], *FAST, "--output", folder], capsys)
    assert code == 130 and "1 of 2 outputs" in err and "--skip-existing" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["photo__noise.losses.jsonl", "photo__noise.png"]


def test_an_unreadable_image_fails_only_its_runs(pics, tmp_path, capsys, no_curves, vgg16_path):
    (pics["contents"] / "broken.png").write_text("not an image")
    folder = tmp_path / "o"
    code, out, err = run_main(["--content", pics["contents"], "--style", pics["noise"], *FAST, "--output", folder],
                              capsys)
    assert_one_line_error(code, err, "1 of 3 runs failed", "broken__noise", "broken.png")
    assert "failed: broken__noise" in out
    assert sorted(results(folder)) == ["a-photo__noise.png", "b-photo__noise.png"]
    # the contact sheet: row 0 the style, then a row per content; the broken run a grey box
    sheet = images.load_image(folder / batch.SHEET_NAME)
    thumb, label_h = gatys_cli.SHEET_THUMB, cs.label_line_height()  # labels of one line: no sweep
    assert sheet.shape == (cs.PAD + 4 * (thumb + label_h + cs.PAD), cs.PAD + 2 * (thumb + cs.PAD), 3)

    def box(i, j):
        y, x = cs.PAD + i * (thumb + label_h + cs.PAD), cs.PAD + j * (thumb + cs.PAD)
        return sheet[y:y + thumb, x:x + thumb]

    expected = images.load_image(folder / "a-photo__noise.png", size=thumb)  # 135×160, centred
    top = (thumb - expected.shape[0]) // 2
    assert np.abs(box(1, 1)[top:top + expected.shape[0]] - expected).mean() < 0.03
    assert np.abs(box(3, 1)[8:-8, 8:-8] - np.array(cs.EMPTY) / 255).max() < 0.05
    assert np.abs(box(0, 0)[8:-8, 8:-8] - 1).max() < 0.05  # the blank corner


def test_contact_sheet_layout():
    red = np.zeros((10, 20, 3), np.float32)
    red[..., 0] = 1
    grid = [[cs.Cell(None), cs.Cell(red, "style\nstyle-weight=1000")],
            [cs.Cell(red, "a label far too long to fit in forty pixels"), cs.Cell(None, "failed")]]
    sheet = cs.contact_sheet(grid, thumb=40)
    cell_h = 40 + 2 * cs.label_line_height() + cs.PAD
    assert sheet.shape == (cs.PAD + 2 * cell_h, cs.PAD + 2 * (40 + cs.PAD), 3) and sheet.dtype == np.uint8
    x1 = cs.PAD + 40 + cs.PAD
    assert tuple(sheet[cs.PAD + 20, x1 + 20]) == (255, 0, 0)  # the image, centred in its box
    assert tuple(sheet[cs.PAD + 2, x1 + 2]) == cs.BACKGROUND  # around it
    assert tuple(sheet[cs.PAD + cell_h + 20, x1 + 20]) == cs.EMPTY  # no image: grey
    assert tuple(sheet[cs.PAD + 20, cs.PAD + 20]) == cs.BACKGROUND  # no image, no label: blank
    label = sheet[cs.PAD + cell_h + 40:cs.PAD + 2 * cell_h - cs.PAD, cs.PAD:x1]
    assert (label < 128).any() and (label[:, 42:] == 255).all()  # text, cut at the box's width


def test_contact_sheet_shrinks_thumbnails_then_refuses():
    assert cs.fitted_thumb(2, 3, 160, 20) == 160
    assert cs.fitted_thumb(100, 3, 160, 20) == (cs.MAX_SIDE - cs.PAD) // 100 - cs.PAD - 20
    with pytest.raises(ValueError, match="too many"):
        cs.fitted_thumb(1000, 3, 160, 20)


# ------------------------------------------------------------------------ bad usage

BAD_BATCHES = [
    (["--style-blend-weights", "1,1"], "--style-blend-weights"),
    (["--output", "out/result.png"], "must be a folder"),
    (["--output", "afile"], "must be a folder"),
    (["--save-every", "1"], "--save-every"),
    (["--style-weight", "1e3,-1"], "--style-weight"),
    (["--seed", "0,x"], "--seed"),
    (["--seed", ""], "--seed"),
    (["--content", "nowhere/", "--batch"], "no such file or folder"),
    (["--content", "empty"], "no image files"),
]


@pytest.mark.parametrize("args,needle", BAD_BATCHES, ids=[" ".join(a) for a, _ in BAD_BATCHES])
def test_bad_batches(pics, tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file")
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(["--content", pics["contents"], "--style", pics["noise"], pics["stripes"], *FAST, *args],
                            capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "minnst_out").exists() and not (tmp_path / "out").exists()


def test_a_batch_needs_styles(pics, capsys):
    code, _, err = run_main(["--content", pics["contents"], *FAST], capsys)
    assert_one_line_error(code, err, "--style")
