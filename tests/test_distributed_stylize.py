"""``python -m minnst.stylize`` on a Dask cluster: a folder gives the same bytes as without
one, a worker killed during a job loses no output, ``--skip-existing`` leaves what exists,
a scheduler that does not answer is one line, and a clip cut into chunks gives the same
frames. Tiny images (48×64) and a tiny network made here; the 2-process LocalCluster is
conftest's ``cluster2`` except where a test kills a worker."""
import contextlib
import os
import signal
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("distributed", reason="Dask not installed: pip install 'minnst[test]'")

from minnst import distributed, stylize  # noqa: E402
from minnst.transformer import TransformerConfig, TransformerNet  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    net = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1), seed=0)
    return net.save(tmp_path_factory.mktemp("model") / "tiny.h5", meta={"style": "noise.png"}, dtype=np.float16)


def make_photos(folder, n):
    """``n`` random 48×64 photos (every fourth in a subfolder, as PNG or JPEG)."""
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir(parents=True)
    for i in range(n):
        where = folder / "nested" if i % 4 == 3 else folder
        pixels = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(where / f"p{i:02d}.{'jpg' if i % 2 else 'png'}")
    return folder


def outputs(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def on_cluster2(cluster2, monkeypatch):
    """``--workers 2`` runs on conftest's cluster instead of starting one per call."""
    monkeypatch.setattr(distributed, "cluster", lambda workers=None, scheduler=None, **kw:
                        contextlib.nullcontext(cluster2 if workers or scheduler else None))
    return cluster2


def test_folder_on_the_cluster_is_the_serial_bytes(model, tmp_path, on_cluster2, capsys):
    photos = make_photos(tmp_path / "photos", 6)
    (photos / "broken.png").write_bytes(b"not a png")
    argv = ["--model", str(model), "--input", str(photos), "--size", "40", "--quiet"]
    assert stylize.main([*argv, "--output", str(tmp_path / "serial")]) == 2
    capsys.readouterr()
    assert stylize.main([*argv, "--output", str(tmp_path / "cluster"), "--workers", "2"]) == 2
    err = capsys.readouterr().err  # the bad image among many: the others written, then one line
    assert len(err.strip().splitlines()) == 1 and "broken.png" in err and "1 of 7 images" in err
    serial, cluster = outputs(tmp_path / "serial"), outputs(tmp_path / "cluster")
    assert len(serial) == 6 and cluster == serial
    # a single file, to PNG (its metadata in text chunks)
    one = ["--model", str(model), "--input", str(photos / "p00.png")]
    assert stylize.main([*one, "--output", str(tmp_path / "a.png")]) == 0
    assert stylize.main([*one, "--output", str(tmp_path / "b.png"), "--workers", "2"]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_a_worker_killed_during_a_job_loses_no_output(model, tmp_path):
    """SIGKILL one of two workers once the first image is done: the nanny restarts it,
    the scheduler reruns what it held, and every output is still the serial bytes."""
    photos = make_photos(tmp_path / "photos", 16)
    jobs = stylize._plan(photos, tmp_path / "cluster", "tiny")
    net = stylize.load_network(model)
    assert stylize.stylize_images(stylize._plan(photos, tmp_path / "serial", "tiny"), net, model) == []
    killed = []
    with distributed.cluster(workers=2, say=None) as c:
        victim = sorted(c.client.run(os.getpid).values())[0]

        def kill_once(n):
            if not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        assert stylize.stylize_images(jobs, net, model, cluster=c, progress=kill_once) == []
        assert killed
        c.client.wait_for_workers(2, timeout=30)  # the nanny has started a new one
        assert victim not in c.client.run(os.getpid).values()
    assert outputs(tmp_path / "cluster") == outputs(tmp_path / "serial") and len(jobs) == 16


@pytest.mark.parametrize("where", ["here", "cluster"])
def test_skip_existing_leaves_what_exists(model, tmp_path, request, where):
    photos = make_photos(tmp_path / "photos", 5)
    argv = ["--model", str(model), "--input", str(photos), "--quiet"]
    assert stylize.main([*argv, "--output", str(tmp_path / "ref")]) == 0
    ref = outputs(tmp_path / "ref")
    out = tmp_path / "out"
    kept = sorted(ref)[:2]
    for name in kept:  # outputs of an earlier job, which --skip-existing must not redo
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"from an earlier job")
        os.utime(out / name, (1e9, 1e9))
    cluster = ["--workers", "2"] if where == "cluster" else []
    if cluster:
        request.getfixturevalue("on_cluster2")
    assert stylize.main([*argv, "--output", str(out), "--skip-existing", *cluster]) == 0
    got = outputs(out)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name] == (b"from an earlier job" if name in kept else ref[name]), name
    assert all(os.stat(out / name).st_mtime == 1e9 for name in kept)


def test_a_scheduler_that_does_not_answer_is_one_line(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1.0)
    photos = make_photos(tmp_path / "photos", 2)
    t0 = time.monotonic()
    assert stylize.main(["--model", str(model), "--input", str(photos), "--output", str(tmp_path / "out"),
                         "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert time.monotonic() - t0 < 8
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot reach the Dask scheduler" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- video


@pytest.fixture
def clip(tmp_path):
    """12 frames of a 2-px pan, 48×64, at 12 fps."""
    pytest.importorskip("av", reason="PyAV not installed: pip install 'minnst[video]'")
    pytest.importorskip("cv2", reason="OpenCV not installed: pip install 'minnst[video]'")
    from minnst import procedural, video

    frames, _ = video.camera_clip(procedural.stained_glass(144, 192, seed=0), 12, 48, 64, "pan", 2.0)
    path = tmp_path / "clip.mp4"
    video.write_video(path, [video.Frame(i, None, None, f) for i, f in enumerate(frames)], rate=Fraction(12))
    return path


@pytest.fixture
def encoded(monkeypatch):
    """``{output name: the frames handed to the encoder}`` of every ``video.write_video``.
    The frames, not the files, are compared: the same frames can make different H.264
    files (x264's macroblock tree, docs/video.md)."""
    from minnst import video

    seen, real = {}, video.write_video

    def spy(dst, frames, *args, **kwargs):
        seen[Path(dst).name] = kept = []
        return real(dst, (kept.append(fr) or fr for fr in frames), *args, **kwargs)

    monkeypatch.setattr(video, "write_video", spy)
    return seen


def same_frames(a, b) -> bool:
    return len(a) == len(b) and all(
        (x.index, x.pts, x.time_base) == (y.index, y.pts, y.time_base) and np.array_equal(x.image, y.image)
        for x, y in zip(a, b))


def test_clip_in_chunks_on_the_cluster(model, clip, tmp_path, on_cluster2, encoded, capsys):
    """Frame by frame: the cluster's frames are the serial ones. Stabilised: each chunk is
    what ``video.stylize_chunk`` makes of it, led by the frames before it."""
    from minnst import video

    argv = ["--model", str(model), "--input", str(clip), "--quiet", "--stabilize", "none"]
    assert stylize.main([*argv, "--output", str(tmp_path / "serial.mp4")]) == 0
    assert stylize.main([*argv, "--output", str(tmp_path / "cluster.mp4"), "--workers", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "12 frames" in out[-1] and "in chunks of 6" in out[-1] and "in chunks of" not in out[-2]
    assert len(encoded["serial.mp4"]) == 12 and same_frames(encoded["cluster.mp4"], encoded["serial.mp4"])
    assert video.probe(tmp_path / "cluster.mp4").frames == 12

    stats = stylize.stylize_video_chunks(on_cluster2, clip, tmp_path / "flow.mp4", model, stabilize="flow")
    assert stats["frames"] == 12 and stats["chunk"] == 6
    net = stylize.load_network(model)
    expected = [*video.stylize_chunk(net, clip, 0, 6), *video.stylize_chunk(net, clip, 6, 12)]
    assert same_frames(encoded["flow.mp4"], expected)
    # the second chunk's lead (6 frames, of up to 24) reaches back to the clip's start, so
    # the stabiliser's state at the seam is the one-pass state exactly
    assert same_frames(expected, list(video.stylize_frames(net, video.read_frames(clip))))
