"""Video: decoding/encoding that keeps count, rate, size and audio; streaming; the flow
machinery against its naive twin and against clips whose true motion is known; the
stabiliser lowering the warping error; chunks; bad inputs as one ``VideoError`` line and
no output file. Every clip is tiny and made here (24×32 px, a few frames)."""
import re
from fractions import Fraction
from itertools import chain

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV not installed: pip install 'minnst[video]'")
pytest.importorskip("cv2", reason="OpenCV not installed: pip install 'minnst[video]'")

from minnst import procedural, video  # noqa: E402
from minnst.transformer import TransformerConfig, TransformerNet  # noqa: E402
from minnst.video import VideoError  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return TransformerNet(TransformerConfig(width=0.125, residual_blocks=1), seed=0).eval()


def scene(h, w):
    return procedural.stained_glass(3 * h, 3 * w, seed=0)


def make_clip(path, n=6, h=24, w=32, rate=12, audio=True, codec="libx264", faststart=False):
    """Encode a pan over a procedural picture (and a 440 Hz tone) into ``path``; returns
    the frames as encoded (before compression)."""
    frames, _ = video.camera_clip(scene(h, w), n, h, w, "pan", 2.0)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        if audio:
            a = out.add_stream("aac", rate=8000)
            a.layout = "mono"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if audio:
            total = 8000 * n // rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / 8000)).astype(np.float32)[None]
            for k in range(0, total, 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + 1024]), format="flt",
                                                layout="mono")
                af.sample_rate, af.pts = 8000, k
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    return frames


def audio_packets(path):
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def decoded(path):
    with av.open(str(path)) as c:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


# ----------------------------------------------------------------------------- flow maths


def test_warp_matches_its_naive_twin(rng):
    img = rng.random((20, 30, 3), dtype=np.float32)
    flow = rng.uniform(-4, 4, (20, 30, 2)).astype(np.float32)  # reaches past the borders too
    np.testing.assert_allclose(video.warp(img, flow), video.warp_naive(img, flow), atol=1e-5)
    shift = np.broadcast_to(np.float32([2, -1]), (20, 30, 2))  # whole pixels: exact, any kernel
    np.testing.assert_array_equal(video.warp(img, shift, "cubic")[1:, :-2], img[:-1, 2:])


@pytest.mark.parametrize("motion,step", [("pan", 2.5), ("zoom", 5.0)])
def test_true_flow_of_camera_clips_brings_each_frame_onto_the_next(motion, step):
    import cv2

    photo_like = cv2.GaussianBlur(scene(48, 64), (0, 0), 1.5)  # no aliasing in the zoom
    frames, flows = video.camera_clip(photo_like, 4, 48, 64, motion, step)
    for t in (1, 3):
        err = video.warping_error(frames[t - 1].astype(np.float32), frames[t], flows[t])
        still = np.abs(frames[t].astype(np.float32) - frames[t - 1]).mean()
        assert err < 0.25 * still, (err, still)  # what is left is resampling, not motion
        assert np.abs(video.optical_flow(frames[t], frames[t - 1]) - flows[t])[4:-4, 4:-4].mean() < 0.5


def test_consistency_mask_marks_what_the_round_trip_does_not_return(rng):
    b = np.broadcast_to(np.float32([3, 0]), (20, 30, 2)).copy()
    f = -b
    f[5:10, 10:15] = [0, 6]  # wrong forward flow in a patch (an occlusion, say)
    m = video.consistency_mask(b, f)
    assert not m[:, -3:].any()             # they come from outside the previous frame
    assert not m[5:10, 8:11].any()         # they land in the patch: the round trip fails
    assert m[12:, :20].all() and m[:5, :20].all()


@pytest.mark.parametrize("shape", [(32, 40), (32, 40, 3)])
def test_equalize_spectrum_gives_the_reference_spectrum(rng, shape):
    ref = rng.random(shape, dtype=np.float32) * 255
    blurred = video.warp(ref, np.full((32, 40, 2), 0.3, np.float32))  # softened by resampling
    out = video.equalize_spectrum(blurred, ref, max_gain=100.0, rings=16)
    assert out.shape == shape
    p_out, p_ref = video.ring_power(out, 16), video.ring_power(ref, 16)
    np.testing.assert_allclose(p_out[..., 1:], p_ref[..., 1:], rtol=1e-3)
    np.testing.assert_allclose(p_out[..., 0], video.ring_power(blurred, 16)[..., 0], rtol=1e-5)  # g_0 = 1
    np.testing.assert_allclose(video.equalize_spectrum(ref, ref), ref, atol=1e-3)
    # the ring powers are the DCT's: their sum is the picture's energy (Parseval)
    np.testing.assert_allclose(p_ref.sum(), (ref.astype(np.float64) ** 2).sum(), rtol=1e-5)


def test_sharpness_of_a_blur_is_lower():
    img = scene(48, 64) * 255
    soft = video.warp(img, np.full((48, 64, 2), 0.5, np.float32))
    a, b = video.sharpness(img), video.sharpness(soft)
    for k in ("", "_rgb"):
        assert b["gradient" + k] < a["gradient" + k] and b["laplacian" + k] < 0.7 * a["laplacian" + k]


# ----------------------------------------------------------------------------- stability


def test_stabilised_pan_has_a_lower_warping_error_and_stays_sharp(net):
    frames, flows = video.camera_clip(scene(48, 64), 6, 48, 64, "pan", 3.0)
    m = video.measure_stability(net, frames, flows)
    plain, stable = m["none"], m["flow"]
    assert stable["warping_error"] < 0.5 * plain["warping_error"], (stable, plain)
    assert stable["warping_error_flow"] < 0.5 * plain["warping_error_flow"]
    assert stable["gradient"] > 0.85 * plain["gradient"]
    assert stable["gradient_rgb"] > 0.85 * plain["gradient_rgb"]
    # the first frame has no past: it is the network's own output
    np.testing.assert_array_equal(stable["outputs"][0], plain["outputs"][0])


def test_a_scene_cut_resets_the_blend(net):
    a, _ = video.camera_clip(scene(48, 64), 2, 48, 64, "pan", 3.0)
    b = video.camera_clip(procedural.stained_glass(144, 192, seed=7), 1, 48, 64, "pan", 3.0)[0]
    stab = video.Stabilizer()
    S = [net.stylize(f / 255.0) * 255 for f in (a[0], b[0])]
    stab(a[0], S[0])
    out = stab(b[0], S[1])
    assert np.abs(out - S[1]).mean() < 0.1 * np.abs(S[0] - S[1]).mean()


# ----------------------------------------------------------------------------- files


def test_video_keeps_frame_count_rate_size_and_audio(net, tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src)
    calls = []
    stats = video.stylize_video(net, src, dst, progress=lambda done, total: calls.append((done, total)))
    info = video.probe(dst)
    assert (info.width, info.height, info.rate, info.frames) == (32, 24, Fraction(12), 6)
    assert stats["frames"] == 6 and stats["audio"] == "copied" and stats["stabilize"] == "flow"
    assert calls == [(i, 6) for i in range(1, 7)]
    assert [t for t, _ in decoded(dst)] == [t for t, _ in decoded(src)]
    assert audio_packets(dst) == audio_packets(src)  # copied bit for bit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]  # no temp file left


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi"])
def test_other_containers_and_a_size(net, tmp_path, suffix):
    src, dst = tmp_path / "in.mp4", tmp_path / f"out{suffix}"
    make_clip(src, audio=suffix != ".avi")
    stats = video.stylize_video(net, src, dst, size=40, stabilize="none")
    assert (stats["width"], stats["height"]) == (40, 30)
    got = decoded(dst)
    assert len(got) == 6 and got[0][1].shape == (30, 40, 3)
    assert np.allclose(np.diff([t for t, _ in got]), 1 / 12, atol=2e-3)


def test_an_odd_size_is_kept_exactly(net, tmp_path):
    src, dst = tmp_path / "odd.mkv", tmp_path / "out.mp4"
    make_clip(src, h=25, w=33, audio=False)
    video.stylize_video(net, src, dst, stabilize="none")
    assert (video.probe(dst).width, video.probe(dst).height) == (33, 25)


def test_a_display_rotation_is_applied_to_the_pixels(net, tmp_path):
    src = tmp_path / "phone.mp4"
    img = np.zeros((24, 32, 3), np.uint8)
    img[:6, :8] = 255  # a mark at the top left of the stored frame
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=12)
        vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
        vs.set_display_rotation(90)  # shown turned 90° counterclockwise
        for i in range(3):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
    fr = next(video.read_frames(src))
    assert fr.image.shape == (32, 24, 3)
    assert fr.image[-6:, :4].mean() > 200 and fr.image[:6, :4].mean() < 50  # now bottom left
    assert next(video.read_frames(src, size=16)).image.shape == (16, 12, 3)
    dst = tmp_path / "out.mp4"
    video.stylize_video(net, src, dst, stabilize="none")
    assert (video.probe(dst).width, video.probe(dst).height) == (24, 32)


def test_streaming_one_frame_in_one_frame_out(net, tmp_path):
    src = tmp_path / "in.mp4"
    make_clip(src, n=8, audio=False)
    pulled, seen = [], []

    def source():
        for fr in video.read_frames(src):
            pulled.append(fr.index)
            yield fr

    frames = video.stylize_frames(net, source())
    dst = tmp_path / "out.mp4"
    video.write_video(dst, frames, src, progress=lambda done, total: seen.append((done, len(pulled))))
    assert seen == [(i, i) for i in range(1, 9)]  # nothing is read ahead, nothing kept


def test_chunks_stitched_in_order_match_one_pass(net, tmp_path):
    src = tmp_path / "in.mp4"
    make_clip(src, n=12, audio=False)
    one_pass = [fr.image.astype(np.float32) for fr in video.stylize_frames(net, video.read_frames(src))]
    chunks = [video.stylize_chunk(net, src, a, b, warmup=6) for a, b in ((0, 6), (6, 12))]
    cold = video.stylize_chunk(net, src, 6, 12, warmup=0)
    assert [fr.index for fr in chain(*chunks)] == list(range(12))
    np.testing.assert_array_equal(chunks[0][0].image, one_pass[0])
    seam_warm = np.abs(chunks[1][0].image - one_pass[6]).mean()
    seam_cold = np.abs(cold[0].image - one_pass[6]).mean()
    assert seam_warm < 0.5 * seam_cold, (seam_warm, seam_cold)
    plain = video.stylize_chunk(net, src, 6, 12, stabilize="none")
    np.testing.assert_array_equal(plain[0].image, next(video.stylize_frames(
        net, video.read_frames(src, start=6), stabilize="none")).image)
    dst = tmp_path / "out.mp4"
    video.write_video(dst, chain(*chunks), src)
    assert video.probe(dst).frames == 12


# ----------------------------------------------------------------------------- bad input


def _zero_frames(path):
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=12)
        vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
        a = out.add_stream("aac", rate=8000)
        a.layout = "mono"
        for k in range(0, 8000, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
            af.sample_rate, af.pts = 8000, k
            out.mux(a.encode(af))
        out.mux(a.encode(None))
        out.mux(vs.encode(None))


def _truncated(path, faststart):
    make_clip(path, n=24, faststart=faststart)
    data = path.read_bytes()
    path.write_bytes(data[: int(0.6 * len(data))])


BAD = {
    "text": (lambda p: p.write_text("not a video\n"), "not a video file"),
    "image": (lambda p: __import__("PIL.Image").Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p, "PNG"),
              "still image"),
    "zero frames": (_zero_frames, "no video frames"),
    "truncated (index at the end)": (lambda p: _truncated(p, False), "truncated or corrupt"),
    # the encoder's output varies from run to run (9 190 or 9 308 bytes in 15 runs here, and
    # one full run failed on the exact count), so where 60 % of it ends may move: the count
    # is checked by pattern, below all 24
    "truncated (index first)": (lambda p: _truncated(p, True), r"ends after (1?\d|2[0-3]) of its 24 frames"),
    "missing": (lambda p: None, "not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_leaves_no_output(net, tmp_path, case):
    make, needle = BAD[case]
    src = tmp_path / ("in.mkv" if case == "zero frames" else "in.png" if case == "image" else "in.mp4")
    make(src)
    dst = tmp_path / "out" / "styled.mp4"
    with pytest.raises(VideoError) as e:
        video.stylize_video(net, src, dst)
    msg = str(e.value)
    assert re.search(needle, msg) and "\n" not in msg and str(src) in msg
    assert not dst.parent.exists() or list(dst.parent.iterdir()) == []


def test_an_existing_output_is_untouched_when_the_input_is_bad(net, tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    _truncated(src, True)
    dst.write_bytes(b"previous result")
    with pytest.raises(VideoError):
        video.stylize_video(net, src, dst)
    assert dst.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_bad_output_name_and_settings(net, tmp_path):
    src = tmp_path / "in.mp4"
    make_clip(src, audio=False)
    with pytest.raises(VideoError, match=r"use a \.mp4"):
        video.stylize_video(net, src, tmp_path / "out.txt")
    with pytest.raises(ValueError, match="stabilize"):
        video.stylize_video(net, src, tmp_path / "out.mp4", stabilize="smooth")
    with pytest.raises(ValueError, match="style"):
        video.stylize_video(net, src, tmp_path / "out.mp4", style="udnie")
    assert [p.name for p in tmp_path.iterdir()] == ["in.mp4"]


def test_bench_video_rows():
    from minnst import bench

    rows = bench.bench_video([64], 1, frames=3)
    by = {r["workload"]: r for r in rows}
    assert set(by) == {"video_frame_by_frame", "video_stabilized", "video_file_frame_by_frame",
                       "video_file_stabilized"}
    stab = by["video_stabilized"]
    plain = by["video_frame_by_frame"]
    assert stab["seconds"] > 0 and plain["seconds"] > 0
    assert 0 < stab["error_ratio"] < 1 and stab["time_ratio"] == stab["seconds"] / plain["seconds"]
    for k in ("gradient", "laplacian", "gradient_rgb", "laplacian_rgb"):
        assert stab[f"{k}_ratio"] > 0.5


def test_stylize_cli_on_a_clip(tmp_path, capsys):
    """``python -m minnst.stylize --input clip.mp4 --output out.mp4``: the same frame count,
    rate and size; a clip that is not a video is one line and exit 2, with no output."""
    from minnst import stylize as cli
    from minnst.transformer import TransformerConfig, TransformerNet

    model = TransformerNet(TransformerConfig(width=0.125, residual_blocks=1), seed=0).save(tmp_path / "m.h5")
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=5)
    out = tmp_path / "out.mp4"
    assert cli.main(["--model", str(model), "--input", str(clip), "--output", str(out), "--quiet"]) == 0
    assert "5 frames" in capsys.readouterr().out
    assert len(decoded(out)) == 5 and decoded(out)[0][1].shape == decoded(clip)[0][1].shape
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    assert cli.main(["--model", str(model), "--input", str(bad), "--output", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


# ----------------------------------------------------------------------------- chunks for a cluster


def test_split_frames_leads_each_chunk_with_the_frames_before_it():
    frames = [video.Frame(i, i, None, np.full((2, 2, 3), i, np.uint8)) for i in range(10)]
    pulled = []

    def source():
        for fr in frames:
            pulled.append(fr.index)
            yield fr

    chunks = video.split_frames(source(), 4, warmup=3)
    first = next(chunks)
    assert len(pulled) == 4  # a stream: one chunk read at a time
    chunks = [first, *chunks]
    assert [[f.index for f in c.frames] for c in chunks] == [[0, 1, 2, 3], [1, 2, 3, 4, 5, 6, 7], [5, 6, 7, 8, 9]]
    assert [c.lead for c in chunks] == [0, 3, 3]
    assert [f.index for c in chunks for f in c.frames[c.lead:]] == list(range(10))
    assert [c.lead for c in video.split_frames(frames, 4)] == [0, 0, 0]
    with pytest.raises(ValueError):
        next(video.split_frames(frames, 0))


def test_chunk_length_spreads_a_short_clip_over_the_workers():
    assert video.chunk_length(None, 4, 24) == 240 == video.chunk_length(10_000, 8, 24)  # warm-up: 10 %
    assert video.chunk_length(10_000, 8, 0) == video.PLAIN_CHUNK_FRAMES                 # no warm-up to spread
    assert video.chunk_length(100, 4, 24) == 25 and video.chunk_length(3, 8, 24) == 1
