"""Training: the data pipeline (folder, HDF5 from make_dataset, sampler, crops), exact resume
(k steps + a kill + resume to N = N steps straight, bit for bit), and the command line
(outputs, resume rules, Ctrl-C → checkpoint + exit 130, export). Tiny networks, 32-px images."""
import dataclasses
import json
import shutil
import signal

import h5py
import numpy as np
import pytest
from PIL import Image

from minnst import make_dataset, train_fast
from minnst.data import BatchSampler, H5Images, ImageFolder, open_dataset, random_crops
from minnst.images import ImageError, load_image
from minnst.optim import Adam
from minnst.train_fast import TrainConfig, read_checkpoint, train
from minnst.transformer import TransformerNet
from minnst.vgg import VGG16


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny matrices: one BLAS thread (oversubscribed spinning threads are 60x slower)."""
    import scipy.linalg.blas  # noqa: F401  (load scipy's BLAS first, so the limit covers it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    photos = d / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(6):
        img = rng.integers(0, 256, (36 + i, 44, 3)).astype(np.uint8)
        Image.fromarray(img).save(photos / ("sub" if i % 2 else ".") / f"p{i}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    style = d / "style.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)).save(style)
    return {"photos": photos, "style": style, "root": d}


@pytest.fixture(scope="module")
def vgg_max(vgg16_f32):
    return VGG16(vgg16_f32.weights, pooling="max")


def tiny_config(files, run_dir, **kw):
    base = dict(style=str(files["style"]), dataset=str(files["photos"]), output=str(run_dir / "model.h5"),
                run_dir=str(run_dir), image_size=32, crop_size=24, batch_size=2, width=0.125,
                iterations=5, sample_every=0, device="cpu", quiet=True, checkpoint_every=2)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- data

def test_sampler_is_reproducible_and_resumable():
    a = BatchSampler(10, 3, seed=4)
    seq = [a.next().tolist() for _ in range(8)]
    again = BatchSampler(10, 3, seed=4)
    assert [again.next().tolist() for _ in range(8)] == seq  # same seed, same batches
    for k in range(8):  # resume from any position
        b = BatchSampler(10, 3, seed=4)
        for _ in range(k):
            b.next()
        c = BatchSampler(10, 3, seed=4)
        c.load_state(b.state())
        assert [c.next().tolist() for _ in range(8 - k)] == seq[k:]
    # each epoch is 3 disjoint batches of a permutation (the last image is skipped)
    assert len(set(sum(seq[:3], []))) == 9
    assert seq[:3] != seq[3:6]  # reshuffled every epoch
    assert BatchSampler(10, 3, seed=5).next().tolist() != seq[0]


def test_random_crops_are_windows_and_seeded():
    batch = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    c1 = random_crops(batch, 5, np.random.default_rng(1))
    c2 = random_crops(batch, 5, np.random.default_rng(1))
    assert c1.shape == (2, 5, 5, 3) and np.array_equal(c1, c2)
    for b in range(2):
        hits = [(i, j) for i in range(4) for j in range(4) if np.array_equal(batch[b, i:i + 5, j:j + 5], c1[b])]
        assert len(hits) == 1


def test_folder_and_make_dataset_agree(files, tmp_path, capsys):
    folder = ImageFolder(files["photos"], size=32)
    assert len(folder) == 7  # 6 photos + the broken file, found recursively
    out = tmp_path / "train.h5"
    assert make_dataset.main(["--images", str(files["photos"]), "--output", str(out), "--size", "32",
                              "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 images" in printed and "1 unreadable" in printed
    with h5py.File(out) as f:
        assert f["images"].shape == (6, 32, 32, 3) and f["images"].dtype == np.uint8
        assert int(f.attrs["skipped"]) == 1
        names = list(f["names"].asstr()[:])
    h5 = open_dataset(out, 32)
    assert isinstance(h5, H5Images) and len(h5) == 6
    good = [i for i, p in enumerate(folder.files) if p.name != "broken.jpg"]
    assert [str(folder.files[i].relative_to(files["photos"])) for i in good] == names
    np.testing.assert_array_equal(h5.get_batch([0, 3]), folder.get_batch([good[0], good[3]]))
    # a batch that meets the unreadable file takes the next readable one, and counts it
    bad = [p.name for p in folder.files].index("broken.jpg")
    folder.get_batch([bad])
    assert folder.skipped == 1
    with pytest.raises(ImageError, match="32px"):
        open_dataset(out, 64)


def test_make_dataset_errors(tmp_path, capsys):
    assert make_dataset.main(["--images", str(tmp_path / "none"), "--output", str(tmp_path / "x.h5")]) == 2
    (tmp_path / "empty").mkdir()
    assert make_dataset.main(["--images", str(tmp_path / "empty"), "--output", str(tmp_path / "x.h5")]) == 2
    (tmp_path / "empty" / "a.jpg").write_bytes(b"junk")
    assert make_dataset.main(["--images", str(tmp_path / "empty"), "--output", str(tmp_path / "x.h5"),
                              "--quiet"]) == 2
    assert not (tmp_path / "x.h5").exists()  # nothing half-written
    err = capsys.readouterr().err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- the objective

@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_training_loss_is_the_gatys_objective(vgg16_f32, pooling):
    """The training loss of one image and ``gatys.Objective`` built from
    ``training_objective`` are the same function: equal values and gradients (float64)."""
    from minnst import gatys
    from minnst.perceptual import training_objective

    vgg = VGG16(vgg16_f32.weights, pooling=pooling)
    rng = np.random.default_rng(3)
    photo = rng.random((28, 36, 3))                    # (H, W, 3) in [0, 1]
    style = rng.random((30, 26, 3))
    y = rng.uniform(0, 255, (1, 3, 28, 36))            # a network output in [0, 255]
    layers = dict(content_layer="relu2_1", style_layers=("relu1_2", "relu2_2", "relu3_1"),
                  style_layer_weights=(1.0, 0.5, 2.0))
    weights = dict(content_weight=1.5, style_weight=3e4, tv_weight=1e-3)
    training = train_fast.TrainingLoss(vgg, style, **layers, **weights, dtype=np.float64)
    total, parts, dy = training(y, photo[None])
    kwargs = training_objective(**layers, **weights, pooling=pooling)
    obj = gatys.Objective(photo, [style], net=vgg, **kwargs)
    value, grad = obj.loss_and_grad(y[0].transpose(1, 2, 0) / 255.0)
    assert kwargs["normalization"] == "johnson"
    assert value == pytest.approx(total, rel=1e-12)
    assert obj.last.content == pytest.approx(parts["content"], rel=1e-12)
    assert obj.last.style == pytest.approx(parts["style"], rel=1e-12)
    assert obj.last.tv == pytest.approx(parts["tv"], rel=1e-12)
    np.testing.assert_allclose(grad / 255.0, dy[0].transpose(1, 2, 0), rtol=1e-10, atol=1e-18)


def test_mean_gram_layer_weights_divide_by_channels_squared():
    from minnst.perceptual import mean_gram_layer_weights

    assert mean_gram_layer_weights(["relu1_2", "relu4_3"], [2.0, 3.0]) == [2.0 / 64**2, 3.0 / 512**2]
    assert mean_gram_layer_weights(["relu3_3"]) == [1.0 / 256**2]


# --------------------------------------------------------------------------- exact resume

@pytest.mark.parametrize("norm,upsample,n,k", [("instance", "nearest", 5, 2), ("batch", "transpose", 3, 1)])
def test_resume_is_bit_exact(files, tmp_path, vgg_max, norm, upsample, n, k):
    """n steps straight == k steps, stop (checkpoint), resume to n: every weight (and the
    batch-norm running statistics) equal, bit for bit."""
    def cfg(d):
        return tiny_config(files, tmp_path / d, norm=norm, upsample=upsample, iterations=n)

    straight = train(cfg("a"), vgg=vgg_max, log=lambda *a: None)
    train(cfg("b"), vgg=vgg_max, stop_after=k, log=lambda *a: None)
    _, _, adam, meta = read_checkpoint(tmp_path / "b" / "checkpoint.h5")
    assert meta["step"] == k and adam["t"] == k and meta["sampler"] == {"epoch": 0, "index": 2 * k}
    assert not (tmp_path / "b" / "model.h5").exists()
    resumed = train(cfg("b"), resume=True, vgg=vgg_max, log=lambda *a: None)
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    la = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, n + 1))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    # the final model file is the trained network, with its training recorded
    m = TransformerNet.load(tmp_path / "b" / "model.h5")
    assert m.meta["iterations"] == n and m.meta["style"] == "style.png"
    assert m.meta["train"]["crop_size"] == 24
    assert np.array_equal(m.params["out.weight"], b["out.weight"])


def test_resume_refuses_changed_style_or_dataset(files, tmp_path, capsys):
    """The checkpoint records the style's sha256 and a dataset fingerprint: a resume on other
    inputs is one line and exit 2, unless --allow-changed-inputs (then recorded)."""
    import shutil

    photos, style = tmp_path / "photos", tmp_path / "style.png"
    shutil.copytree(files["photos"], photos)
    shutil.copy(files["style"], style)
    run = tmp_path / "run"
    base = ["--dataset", str(photos), "--output", str(run / "m.h5"), "--run-dir", str(run), "--image-size", "32",
            "--batch-size", "2", "--width", "0.125", "--sample-every", "0", "--quiet", "--device", "cpu"]
    assert train_fast.main(["--style", str(style), *base, "--iterations", "1"]) == 0
    ckpt_meta = read_checkpoint(run / "checkpoint.h5")[3]
    assert ckpt_meta["style_sha256"] and len(ckpt_meta["dataset_fingerprint"]) == 64
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(style)  # the same path, other pixels
    assert train_fast.main(["--resume", "--run-dir", str(run), "--iterations", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "style images differ" in err and "--allow-changed-inputs" in err and len(err.strip().splitlines()) == 1
    shutil.copy(files["style"], style)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photos / "p0.png")  # a photo replaced
    assert train_fast.main(["--resume", "--run-dir", str(run), "--iterations", "2", "--quiet"]) == 2
    assert "dataset differ" in capsys.readouterr().err
    assert train_fast.main(["--resume", "--run-dir", str(run), "--iterations", "2", "--quiet",
                            "--allow-changed-inputs"]) == 0
    changes = read_checkpoint(run / "checkpoint.h5")[3]["input_changes"]
    assert [c["what"] for c in changes] == ["dataset"] and changes[0]["step"] == 1
    inputs = TransformerNet.load(run / "m.h5").meta["inputs"]  # the model records both
    assert inputs["input_changes"] == changes and inputs["dataset_fingerprint"] == changes[0]["after"]
    # another style file on resume is another run
    assert train_fast.main(["--resume", "--run-dir", str(run), "--style", str(files["photos"] / "p0.png"),
                            "--iterations", "3", "--quiet"]) == 2
    assert "cannot change --style" in capsys.readouterr().err


def test_bad_run_settings_are_refused_before_training(files, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    base = ["--style", str(files["style"]), "--dataset", str(files["photos"]), "--image-size", "32",
            "--width", "0.125", "--quiet", "--device", "cpu", "--run-dir", str(tmp_path / "run")]
    cases = [(["--checkpoint-every", "0"], "--checkpoint-every"), (["--sample-every", "-1"], "--sample-every"),
             (["--batch-size", "99"], "--batch-size"), (["--output", str(tmp_path / "file" / "m.h5")], "file"),
             (["--checkpoint-minutes", "0"], "--checkpoint-minutes")]
    for extra, needle in cases:
        code = train_fast.main([*base, "--output", str(tmp_path / "m.h5"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp_path / "run" / "checkpoint.h5").exists()


# --------------------------------------------------------------------------- many styles

@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    d = tmp_path_factory.mktemp("styles")
    rng = np.random.default_rng(9)
    for name, shape in (("dots", (30, 40, 3)), ("waves", (36, 28, 3)), ("stripes", (32, 32, 3))):
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(d / f"{name}.png")
    return d


def test_style_schedule_visits_every_style_once_per_round():
    for rnd in range(3):
        seen = [train_fast.style_schedule(0, rnd * 4 + i, 4) for i in range(4)]
        assert sorted(seen) == [0, 1, 2, 3]
    assert [train_fast.style_schedule(5, i, 1) for i in range(3)] == [0, 0, 0]


def test_many_styles_resume_is_bit_exact(files, styles, tmp_path, vgg_max):
    """A two-style run: n steps straight == k steps + resume, bit for bit; each step logs
    its style, the model records each style's settings."""
    paths = (str(styles / "dots.png"), str(styles / "waves.png"))

    def cfg(d):
        return tiny_config(files, tmp_path / d, style=paths, style_weight=(1e4, 3e4), iterations=4)

    straight = train(cfg("a"), vgg=vgg_max, log=lambda *a: None)
    train(cfg("b"), vgg=vgg_max, stop_after=1, log=lambda *a: None)
    resumed = train(cfg("b"), resume=True, vgg=vgg_max, log=lambda *a: None)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert straight.styles == ["dots", "waves"]
    rows = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert sorted(r["style_name"] for r in rows) == ["dots", "dots", "waves", "waves"]
    net = TransformerNet.load(tmp_path / "a" / "model.h5")
    assert net.styles == ["dots", "waves"]
    assert net.style_settings("waves")["objective"]["beta"] == 3e4
    assert net.style_settings("dots")["image"] == "dots.png"


def test_resume_may_fine_tune_style_weights_and_lr(files, styles, tmp_path, vgg_max):
    """A resume with new style weights and learning rate: steps after it equal a run that
    starts from the same checkpoint with those settings in its configuration (so they
    are really used), the checkpoint and the model record the schedule, and the model's
    objective is the final one."""
    paths = (str(styles / "dots.png"), str(styles / "waves.png"))
    first = tiny_config(files, tmp_path / "a", style=paths, style_weight=(1e4, 3e4), iterations=2)
    train(first, vgg=vgg_max, log=lambda *a: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    said = []
    tuned = dataclasses.replace(first, style_weight=(2e3, 5e3), lr=3e-4, saturation_weight=0.25, iterations=4)
    net = train(tuned, resume=True, vgg=vgg_max, log=said.append)
    assert any("style weight [10000.0, 30000.0] → [2000.0, 5000.0] from step 2" in s for s in said), said
    meta = read_checkpoint(tmp_path / "a" / "checkpoint.h5")[3]
    assert meta["style_weight_schedule"] == [[0, [1e4, 3e4]], [2, [2e3, 5e3]]]
    assert meta["lr_schedule"] == [[0, first.lr], [2, 3e-4]]
    assert meta["saturation_schedule"] == [[0, first.saturation_weight], [2, 0.25]]
    model = TransformerNet.load(tmp_path / "a" / "model.h5")
    assert [model.style_settings(n)["objective"]["beta"] for n in model.styles] == [2e3, 5e3]
    assert model.meta["inputs"]["style_weight_schedule"][-1] == [2, [2e3, 5e3]]
    # the same two steps, by hand: Adam's state from the checkpoint, the new rate and losses
    _, ref, adam_state, _ = read_checkpoint(tmp_path / "b" / "checkpoint.h5")
    rows = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    losses = [train_fast.TrainingLoss(vgg_max, load_image(p, size=first.style_size or first.image_size), first.content_layer,
                                      first.style_layers, first.content_weight, w, first.tv_weight)
              for p, w in zip(paths, (2e3, 5e3))]
    opt = Adam(ref.params, lr=first.lr)
    opt.load_state_dict(adam_state)
    opt.lr = 3e-4
    ref.train()
    dataset = open_dataset(first.dataset, first.image_size)
    sampler = BatchSampler(len(dataset), first.batch_size, seed=first.seed)  # replayed from step 0
    for step in range(4):
        idx = sampler.next()
        if step < 2:
            continue
        batch = dataset.get_batch(idx)
        if first.crop_size:
            batch = random_crops(batch, first.crop_size, np.random.default_rng([first.seed, sampler.epoch, sampler.index]))
        k = train_fast.style_schedule(first.seed, step, 2)
        total, parts = train_fast.train_step(ref, opt, losses[k], batch, np, style=ref.style_mix(ref.styles[k], len(batch)),
                                             saturation_weight=0.25)
        assert total == pytest.approx(rows[step]["loss"], rel=1e-6)
        assert parts["saturation"] == pytest.approx(rows[step]["saturation"], rel=1e-6)
    a, b = net.state_dict(), ref.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_saturation_penalty_frees_a_saturated_output(vgg_max):
    """An output channel driven deep into tanh's saturation (z = 11: tanh rounds to 1 in
    float32) gets no gradient from the perceptual loss, so Adam never moves it; with the
    saturation penalty its bias comes back towards the bound by about lr per step."""
    from minnst.transformer import TransformerConfig

    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (2, 24, 24, 3)).astype(np.uint8)
    loss = train_fast.TrainingLoss(vgg_max, rng.random((24, 24, 3)).astype(np.float32))
    moved = {}
    for mu in (0.0, 1.0):
        net = TransformerNet(TransformerConfig(width=0.125), seed=1)
        net.layers["out"].params["weight"][0] = 0.0
        net.layers["out"].params["bias"][0] = 11.0  # channel 0: z = 11 everywhere
        net.train()
        opt = Adam(net.params, lr=1e-2)
        for _ in range(3):
            train_fast.train_step(net, opt, loss, batch, np, saturation_weight=mu)
        moved[mu] = 11.0 - float(net.layers["out"].params["bias"][0])
    assert moved[0.0] == 0.0
    assert moved[1.0] > 2.5e-2


def test_style_settings_reproduce_the_training_loss(files, styles, tmp_path, vgg_max):
    """``gatys.Objective(photo, [style image], **settings["objective"])`` at the network's
    stylisation equals that style's training loss for the photo (issue: the model records
    its objective)."""
    from minnst import gatys
    from minnst.images import load_image

    paths = (str(styles / "dots.png"), str(styles / "waves.png"))
    net = train(tiny_config(files, tmp_path / "r", style=paths, iterations=2), vgg=vgg_max, log=lambda *a: None)
    net = TransformerNet.load(tmp_path / "r" / "model.h5")
    photo = np.random.default_rng(4).random((32, 40, 3)).astype(np.float32)  # multiple of 4: no padding
    for name in net.styles:
        settings = net.style_settings(name)
        style_img = load_image(styles / settings["image"], size=settings["style_size"])
        kwargs = dict(settings["objective"])
        vgg = VGG16(vgg_max.weights, pooling=kwargs.pop("pooling"))
        obj = gatys.Objective(photo, [style_img], net=vgg, pooling=vgg.pooling, **kwargs)
        value, _ = obj.loss_and_grad(net.stylize(photo, style=name))
        train_cfg = net.meta["train"]
        k = [p.endswith(settings["image"]) for p in train_cfg["style"]].index(True)
        loss = train_fast.TrainingLoss(vgg, style_img, train_cfg["content_layer"], train_cfg["style_layers"],
                                       train_cfg["content_weight"], train_cfg["style_weight"] if
                                       not isinstance(train_cfg["style_weight"], list) else
                                       train_cfg["style_weight"][k], train_cfg["tv_weight"])
        x = np.ascontiguousarray(photo.transpose(2, 0, 1)[None] * 255.0, dtype=np.float32)
        y = net.infer(x, style=name)
        total = loss(y, photo[None])[0]
        assert value == pytest.approx(total, rel=1e-4), name


def test_add_style_trains_only_the_new_style(files, styles, tmp_path, vgg_max):
    paths = (str(styles / "dots.png"), str(styles / "waves.png"))
    base = train(tiny_config(files, tmp_path / "base", style=paths, iterations=2), vgg=vgg_max,
                 log=lambda *a: None)
    more = train(tiny_config(files, tmp_path / "more", style=str(styles / "stripes.png"), iterations=2,
                             base_model=str(tmp_path / "base" / "model.h5")), vgg=vgg_max, log=lambda *a: None)
    assert more.styles == ["dots", "waves", "stripes"]
    a, b = base.state_dict(), more.state_dict()
    changed = []
    for k in a:
        if a[k].shape == b[k].shape:
            assert np.array_equal(a[k], b[k]), k
        else:  # a conditional norm's γ or β: the old rows kept, the new one trained
            assert np.array_equal(a[k], b[k][:2]), k
            changed.append(not np.allclose(b[k][2], a[k].mean(axis=0)))
    assert changed and any(changed)
    model = TransformerNet.load(tmp_path / "more" / "model.h5")
    assert set(model.meta["styles"]) == {"dots", "waves", "stripes"}


def test_cli_many_styles_and_add_style(files, styles, tmp_path, vgg16_path, capsys):
    run = tmp_path / "run"
    argv = ["--style", str(styles / "dots.png"), str(styles / "waves.png"), "--dataset", str(files["photos"]),
            "--output", str(run / "m.h5"), "--run-dir", str(run), "--image-size", "32", "--batch-size", "2",
            "--width", "0.125", "--iterations", "2", "--sample-every", "2", "--quiet", "--device", "cpu"]
    assert train_fast.main(argv) == 0
    assert (run / "samples" / "step_000002.png").is_file()
    assert train_fast.main(["--add-style", str(styles / "stripes.png"), "--dataset", str(files["photos"]),
                            "--output", str(tmp_path / "m3.h5"), "--run-dir", str(tmp_path / "run3"),
                            "--iterations", "1", "--quiet", "--device", "cpu", "--sample-every", "0"]) == 2
    assert "--model" in capsys.readouterr().err
    assert train_fast.main(["--add-style", str(styles / "stripes.png"), "--model", str(run / "m.h5"),
                            "--dataset", str(files["photos"]), "--output", str(tmp_path / "m3.h5"),
                            "--run-dir", str(tmp_path / "run3"), "--image-size", "32", "--batch-size", "2",
                            "--iterations", "1", "--quiet", "--device", "cpu", "--sample-every", "0"]) == 0
    assert TransformerNet.load(tmp_path / "m3.h5").styles == ["dots", "waves", "stripes"]
    # many styles need instance norm
    assert train_fast.main([*argv[:-2], "--norm", "batch", "--overwrite"]) == 2
    assert "--norm" in capsys.readouterr().err


# --------------------------------------------------------------------------- command line

def _args(files, run_dir, *extra):
    return ["--style", str(files["style"]), "--dataset", str(files["photos"]), "--output",
            str(run_dir / "m.h5"), "--run-dir", str(run_dir), "--image-size", "32", "--batch-size", "2",
            "--width", "0.125", "--device", "cpu", "--quiet", *extra]


def test_cli_train_resume_export(files, tmp_path, vgg16_path, capsys):
    run = tmp_path / "run"
    assert train_fast.main(_args(files, run, "--iterations", "3", "--sample-every", "2")) == 0
    for name in ("m.h5", "checkpoint.h5", "log.jsonl", "loss.png", "config.json", "samples/step_000002.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "content", "style", "tv", "step_s"} <= set(rows[0])
    # a second start would overwrite the run: refused
    assert train_fast.main(_args(files, run, "--iterations", "3")) == 2
    assert "--resume" in capsys.readouterr().err
    # resume: only the run settings may change
    assert train_fast.main(["--resume", "--run-dir", str(run), "--norm", "batch"]) == 2
    assert "cannot change --norm" in capsys.readouterr().err
    assert train_fast.main(["--resume", "--run-dir", str(run), "--iterations", "4", "--quiet"]) == 0
    assert read_checkpoint(run / "checkpoint.h5")[3]["step"] == 4
    assert len((run / "log.jsonl").read_text().splitlines()) == 4
    # export, float16
    out = tmp_path / "exported.h5"
    assert train_fast.main(["--export", str(run / "checkpoint.h5"), "--output", str(out), "--float16"]) == 0
    net = TransformerNet.load(out)
    assert net.meta["iterations"] == 4
    with h5py.File(out) as f:
        assert f["state"]["out.weight"].dtype == np.float16


def test_cli_bad_input_is_one_line_exit_2(files, tmp_path, capsys):
    cases = [
        [],  # no --style
        _args(files, tmp_path / "r1", "--iterations", "0"),
        _args(files, tmp_path / "r2", "--crop-size", "64"),
        _args(files, tmp_path / "r3", "--style-layers", "relu9_9"),
        ["--style", str(tmp_path / "nope.jpg"), "--dataset", str(files["photos"]), "--run-dir", str(tmp_path / "r4")],
        ["--style", str(files["style"]), "--dataset", str(tmp_path / "nodata"), "--run-dir", str(tmp_path / "r5")],
        ["--resume", "--run-dir", str(tmp_path / "r6")],
        ["--export", str(files["style"]), "--output", str(tmp_path / "x.h5")],
    ]
    for argv in cases:
        assert train_fast.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(files, tmp_path, vgg16_path, monkeypatch, capsys):
    real_step = train_fast.train_step
    calls = []

    def step_then_ctrl_c(*a, **kw):
        out = real_step(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
        return out

    monkeypatch.setattr(train_fast, "train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest itself runs in the background
    run = tmp_path / "run"
    assert train_fast.main(_args(files, run, "--iterations", "10", "--sample-every", "0")) == 130
    assert "--resume" in capsys.readouterr().out
    assert read_checkpoint(run / "checkpoint.h5")[3]["step"] == 2  # the step in flight completed
    assert not (run / "m.h5").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.image_size, c.batch_size, c.iterations, c.lr) == (256, 4, 40000, 1e-3)
    assert c.content_layer == "relu2_2" and c.style_layers == ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    assert (c.pooling, c.norm, c.upsample, c.width, c.crop_size) == ("max", "instance", "nearest", 1.0, 0)


def test_memory_refusal_names_a_batch_or_crop_that_fits(files, tmp_path, capsys, monkeypatch):
    """A step whose estimate exceeds the memory there is is refused before any work, naming
    a --batch-size that fits, or at batch 1 a --crop-size (issue 13)."""
    from minnst.memory import estimate_training_memory
    from minnst.transformer import TransformerConfig

    net = TransformerConfig(width=0.125)
    run = tmp_path / "run"
    monkeypatch.setattr(train_fast, "available_memory",
                        lambda: estimate_training_memory(net, 2, 32)["total"] + 1)
    assert train_fast.main(_args(files, run, "--image-size", "32", "--crop-size", "0", "--batch-size", "4")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "try --batch-size 2" in err and "4 crops of 32×32" in err
    monkeypatch.setattr(train_fast, "available_memory",
                        lambda: estimate_training_memory(net, 1, 27)["total"] + 1)
    assert train_fast.main(_args(files, run, "--image-size", "32", "--crop-size", "0", "--batch-size", "1")) == 2
    assert "try --batch-size 1 --crop-size 24" in capsys.readouterr().err  # a multiple of 4
    assert not run.exists()


def test_training_loss_runs_vgg_on_the_fast_path_and_its_settings_rebuild_it(vgg_max):
    """The training loss takes VGG16's "fast" convolutions (perceptual.TRAINING_CONV_METHOD);
    ``settings()`` carries the method, so a loss rebuilt from them (a cluster's workers)
    gives the same bits."""
    from minnst.perceptual import TRAINING_CONV_METHOD, PerceptualLoss

    rng = np.random.default_rng(5)
    loss = train_fast.TrainingLoss(vgg_max, rng.random((40, 40, 3), dtype=np.float32))
    assert loss.loss.conv_method == TRAINING_CONV_METHOD == "fast"
    again = PerceptualLoss(vgg_max, **loss.loss.settings())
    assert again.settings() == loss.loss.settings()
    x = rng.random((1, 40, 40, 3), dtype=np.float32)
    targets = loss.loss.content_targets(x)
    (t1, g1), (t2, g2) = (lf.loss_and_grad(x, targets, loss.targets) for lf in (loss.loss, again))
    assert t1.total == t2.total and np.array_equal(g1, g2)


@pytest.mark.parametrize("config, width", [
    (dict(width=0.25, styles=("a", "b", "c")), 0.5),            # conditional norms, resize-conv
    (dict(width=0.25, upsample="transpose"), 0.75),             # k = 3, transposed convolutions
    (dict(width=0.25, norm="batch"), 0.5),                      # batch norm (batch statistics)
])
def test_widen_keeps_the_function(config, width):
    from minnst.transformer import TransformerConfig

    base = TransformerNet(TransformerConfig(**config), seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    for key, v in base.state_dict().items():  # γ, β away from 1, 0: every parameter matters
        if "norm" in key:
            v[...] = rng.uniform(0.5, 1.5, v.shape) if key.endswith("weight") else rng.normal(0, 0.5, v.shape)
    x = rng.uniform(0, 255, (2, 3, 20, 20))
    style = np.array([[1.0, 0, 0], [0.2, 0.3, 0.5]]) if "styles" in config else None
    wide = train_fast.widen(base, width)
    assert wide.config.width == width and wide.config.styles == base.config.styles
    c = [round(n * width / base.config.width) for n in base.config.channels]
    assert list(wide.config.channels) == c
    y0, y1 = base.forward(x, style)[0], wide.forward(x, style)[0]
    assert np.abs(y1 - y0).max() < 1e-9 * 255
    # the noise lets the copies of a channel differ, and changes the output about that much
    noisy = train_fast.widen(base, width, seed=3, noise=1e-3)
    w = noisy.state_dict()["down2.conv.weight"]
    half = w.shape[0] * base.config.width // width
    assert not np.allclose(w[:int(half)], w[int(half):2 * int(half)])
    d = np.abs(noisy.forward(x, style)[0] - y0).max()
    assert 1e-6 < d < 5


def test_widen_refuses_a_width_that_is_not_a_multiple():
    from minnst.transformer import TransformerConfig

    with pytest.raises(ValueError, match="whole multiple"):
        train_fast.widen(TransformerNet(TransformerConfig(width=0.5)), 0.75)


def test_resume_may_widen_the_network(files, tmp_path, vgg_max, capsys):
    """--resume --width 2× grows the checkpoint's network (``widen``) with a fresh Adam,
    records the change, and resumes exactly after it; a width that is not a whole
    multiple is refused in one line."""
    first = tiny_config(files, tmp_path / "a", iterations=2)
    train(first, vgg=vgg_max, log=lambda *a: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    wider = dataclasses.replace(first, width=0.25, iterations=4)
    said = []
    straight = train(wider, resume=True, vgg=vgg_max, log=said.append)
    assert any("width 0.125 → 0.25 from step 2" in s for s in said), said
    assert any("widened ×2" in s and "Adam starts afresh" in s for s in said), said
    cfg, net, adam, meta = read_checkpoint(tmp_path / "a" / "checkpoint.h5")
    assert cfg.width == net.config.width == 0.25 and adam["t"] == 2  # two steps since the widening
    assert meta["width_schedule"] == [[0, 0.125], [2, 0.25]]
    assert net.params["res1.body.conv1.weight"].shape == (32, 32, 3, 3)  # 16 at width 0.125
    # the same widening stopped after one step, then resumed at the width it now has, ends alike
    copy = dataclasses.replace(wider, run_dir=str(tmp_path / "b"))
    train(copy, resume=True, vgg=vgg_max, stop_after=1, log=lambda *a: None)
    resumed = train(copy, resume=True, vgg=vgg_max, log=lambda *a: None)
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    for width in ("0.3", "0.0625"):
        assert train_fast.main(["--resume", "--run-dir", str(tmp_path / "a"), "--width", width]) == 2
        err = capsys.readouterr().err
        assert "whole multiple" in err and err.count("\n") == 1 and "Traceback" not in err
