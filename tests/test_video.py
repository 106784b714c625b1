"""Video clips through the Segmenter: a playable H.264 MP4, per-frame rows equal to the image path, smoothing,
and clear refusals of clips we cannot segment."""

import csv
from fractions import Fraction

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES

from medseg_core import Segmenter
from medseg_core.io import read_image
from medseg_core.video import CSV_FIELDS, VideoInputError, encode_video, main, plot_lesion_area, segment_video

av = pytest.importorskip("av")

FPS = 10


def _decoded(path):
    """The RGB frames of a clip as our decoder sees them, and its stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.codec_context.name, stream.codec_context.pix_fmt


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Six 96x72 frames panning across the three example polyp images, at 10 fps."""
    frames = []
    for path in EXAMPLES:
        image = cv2.resize(read_image(path), (128, 96), interpolation=cv2.INTER_AREA)
        frames += [np.ascontiguousarray(image[dy:dy + 72, dx:dx + 96]) for dx, dy in ((0, 0), (16, 12))]
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    encode_video(frames, path, fps=FPS)
    return path


@pytest.fixture(scope="module")
def segmenter(tiny_weights, clip):
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu", postprocess="none")
    # A random tiny network: put the threshold at the median lesion probability so the masks are not trivial.
    first = _decoded(clip)[0][0]
    seg.threshold = float(np.median(seg.predict_probs(first)[0][1]))
    return seg


def test_segment_video_writes_a_browser_mp4_and_rows_equal_to_the_image_path(segmenter, clip, tmp_path):
    out, table = tmp_path / "out.mp4", tmp_path / "frames.csv"
    calls = []
    summary = segment_video(segmenter, clip, out, table, progress=lambda done, total: calls.append((done, total)))
    inputs, _, _ = _decoded(clip)
    written, codec, pix_fmt = _decoded(out)
    assert summary.frames == len(inputs) == len(written) == 6
    assert codec == "h264" and pix_fmt == "yuv420p" and written[0].shape == (72, 96, 3)
    assert summary.fps_in == summary.fps_out == FPS and summary.duration_s == pytest.approx(0.6)
    assert summary.processing_fps > 0 and calls[-1][0] == 6
    assert [r["frame"] for r in summary.rows] == list(range(6))
    assert [r["time_s"] for r in summary.rows] == pytest.approx([i / FPS for i in range(6)])
    for frame, row in zip(inputs, summary.rows):
        expected = segmenter(frame).stats
        assert row["lesion_percent"] == expected["lesion_percent"]
        assert row["lesion_count"] == expected["lesion_count"]
        assert row["mean_confidence"] == expected["mean_confidence"]
    assert 0 < np.mean([r["lesion_percent"] for r in summary.rows]) < 100
    # The overlay is what is written (lossy H.264 with 4:2:0 chroma: nearer the overlay than the plain frame).
    overlay = segmenter(inputs[0]).overlay
    assert np.abs(written[0].astype(int) - overlay).mean() < 0.75 * np.abs(written[0].astype(int) - inputs[0]).mean()
    with open(table, newline="") as f:
        lines = list(csv.DictReader(f))
    assert tuple(lines[0]) == CSV_FIELDS and len(lines) == 6
    assert float(lines[3]["lesion_percent"]) == summary.rows[3]["lesion_percent"]


def test_batches_give_the_same_rows(segmenter, clip, tmp_path):
    one = segment_video(segmenter, clip, tmp_path / "a.mp4")
    four = segment_video(segmenter, clip, tmp_path / "b.mp4", batch_size=4)
    assert four.frames == 6 and four.batch_size == 4
    for a, b in zip(one.rows, four.rows):
        assert abs(a["lesion_percent"] - b["lesion_percent"]) < 0.5  # float rounding at the threshold only


def test_smoothing_is_an_ema_of_the_network_probabilities(segmenter, clip, tmp_path):
    smoothing = 0.6
    summary = segment_video(segmenter, clip, tmp_path / "s.mp4", smoothing=smoothing)
    plain = segment_video(segmenter, clip, tmp_path / "p.mp4")
    ema = None
    for frame, row in zip(_decoded(clip)[0], summary.rows):
        p = segmenter.network_probs([frame])[0]
        ema = p if ema is None else smoothing * ema + (1 - smoothing) * p
        mask = segmenter.mask_from_probs(segmenter.probs_at(ema, *frame.shape[:2]))
        assert row["lesion_percent"] == pytest.approx(100 * mask.mean(), abs=1e-3)
    assert summary.rows[0]["lesion_percent"] == plain.rows[0]["lesion_percent"]
    assert any(a["lesion_percent"] != b["lesion_percent"] for a, b in zip(summary.rows[1:], plain.rows[1:]))
    with pytest.raises(ValueError, match="smoothing"):
        segment_video(segmenter, clip, tmp_path / "x.mp4", smoothing=1.0)


def _clip_with(path, width, height, rate, n):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        if n == 0:
            container.start_encoding()
        for _ in range(n):
            container.mux(stream.encode(av.VideoFrame(width, height, "yuv420p")))
        container.mux(stream.encode(None))
    return path


def test_clips_we_cannot_segment_are_refused_in_one_line(segmenter, clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = {
        text: "not a video we can read",
        truncated: "damaged or truncated",
        empty: "is empty",
        _clip_with(tmp_path / "zero.mp4", 64, 48, 25, 0): "no video frames",
        _clip_with(tmp_path / "8k.mp4", 7680, 4320, 25, 1): "7680x4320; the largest frame side accepted is 3840",
        _clip_with(tmp_path / "long.mp4", 64, 48, Fraction(1, 3600), 2): "lasts 120.0 min; the limit is 10 min",
    }
    for path, message in cases.items():
        out = tmp_path / f"out_{path.stem}.mp4"
        with pytest.raises(VideoInputError, match=message) as err:
            segment_video(segmenter, path, out)
        assert "\n" not in str(err.value) and not out.exists()
    # The limits are parameters: a short clip passes when allowed, a small limit refuses it.
    with pytest.raises(VideoInputError, match="largest frame side accepted is 64"):
        segment_video(segmenter, clip, tmp_path / "o.mp4", max_side=64)


def test_lesion_area_chart():
    rows = [{"time_s": t / 10, "lesion_percent": 10.0 if t < 10 else 40.0} for t in range(20)]
    chart = plot_lesion_area(rows)
    assert chart.shape == (260, 800, 3) and chart.dtype == np.uint8
    red_y, red_x = np.nonzero((chart[..., 0] > 180) & (chart[..., 1] < 120) & (chart[..., 2] < 120))
    assert red_y.size > 100
    # The second half (40% of the frame) is drawn higher up than the first half (10%), four times as far up.
    base = 260 - 36  # the x axis
    left, right = red_y[red_x < 300], red_y[red_x > 500]
    assert base - np.median(right) == pytest.approx(4 * (base - np.median(left)), rel=0.1)
    assert np.count_nonzero((plot_lesion_area([])[..., 1] < 120) & (plot_lesion_area([])[..., 0] > 180)) == 0


def test_cli(tiny_weights, clip, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--smoothing" in capsys.readouterr().out
    out, table, plot = tmp_path / "cli.mp4", tmp_path / "cli.csv", tmp_path / "cli.png"
    assert main([str(clip), "--out", str(out), "--csv", str(table), "--plot", str(plot), "--model", str(tiny_weights),
                 "--postprocess", "none"]) == 0
    assert len(_decoded(out)[0]) == 6 and len(table.read_text().splitlines()) == 7
    assert cv2.imread(str(plot)).shape == (260, 800, 3)
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    assert main([str(bad), "--out", str(tmp_path / "x.mp4"), "--model", str(tiny_weights)]) == 2


def _rows(present: str, fps: float = 10.0) -> list[dict]:
    return [{"frame": i, "time_s": i / fps, "lesion_present": int(c == "x"), "presence_score": 0.9 if c == "x" else 0.1}
            for i, c in enumerate(present)]


def test_lesion_events_skip_flickers_and_bridge_short_gaps():
    from medseg_core.video import lesion_events

    # A one-frame flicker, then seven frames with a two-frame gap inside, then a four-frame run.
    events = lesion_events(_rows("x...xxx..xx......xxxx"), fps=10, min_frames=5, max_gap=2)
    assert [(e["start_frame"], e["end_frame"], e["frames"]) for e in events] == [(4, 10, 5)]
    assert events[0]["start_s"] == 0.4 and events[0]["end_s"] == pytest.approx(1.1)
    assert lesion_events(_rows("x...xxx..xx......xxxx"), fps=10, min_frames=4, max_gap=0)[-1]["start_frame"] == 17
    assert lesion_events(_rows("....."), fps=10) == []


def test_video_reports_presence_per_frame_and_events(segmenter, clip, tmp_path):
    from medseg_core.video import events_markdown

    summary = segment_video(segmenter, clip, tmp_path / "out.mp4", tmp_path / "frames.csv")
    for row in summary.rows:
        assert row["lesion_present"] == int(row["lesion_percent"] > 0) and 0 <= row["presence_score"] <= 1
    assert summary.frames_with_lesion == sum(r["lesion_present"] for r in summary.rows)
    assert summary.events_per_minute == pytest.approx(60 * len(summary.events) / summary.duration_s)
    assert "false-alarm events" in events_markdown(summary, lesion_free=True)
    with open(tmp_path / "frames.csv", newline="") as f:
        assert "lesion_present" in next(csv.reader(f))


def _mjpeg_clip(path, sizes, rate=25):
    """An MJPEG clip whose stream header takes the first size while each frame is encoded at its own size (what a
    hostile file can do: the header says one thing, the JPEG frames another)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=rate)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for i, (w, h) in enumerate(sizes):
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuvj420p"
            encoder.time_base = Fraction(1, rate)
            encoder.open()
            frame = av.VideoFrame(w, h, "yuvj420p")
            frame.pts = i
            for packet in [*encoder.encode(frame), *encoder.encode(None)]:
                packet.stream = stream
                packet.pts = packet.dts = i
                container.mux(packet)
    return path


def test_every_decoded_frame_is_checked_not_only_the_header(segmenter, tmp_path, monkeypatch):
    """A clip whose header (and first frames) say 64x48 but whose later JPEG frames are 4000x2500 (10 MP) is
    refused at the first such frame, before FFmpeg allocates it or anything is converted or segmented."""
    import medseg_core.video as video

    clip = _mjpeg_clip(tmp_path / "lies.avi", [(64, 48)] * 3 + [(4000, 2500)] * 2)
    with av.open(str(clip)) as container:
        assert (container.streams.video[0].codec_context.width, container.streams.video[0].codec_context.height) \
            == (64, 48)
    converted = []
    real = av.VideoFrame.to_ndarray

    def to_ndarray(frame, *args, **kwargs):
        converted.append((frame.width, frame.height))
        return real(frame, *args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", to_ndarray)
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoInputError, match=r"lies.avi: frame 3 is 4000x2500; the largest frame accepted is 8.3 MP"):
        segment_video(segmenter, clip, out)
    assert converted == [(64, 48)] * 3 and not out.exists()
    # Frames within the caps but of another size than the header's are refused too (the output has one size).
    mixed = _mjpeg_clip(tmp_path / "mixed.avi", [(64, 48)] * 2 + [(128, 96)])
    with pytest.raises(VideoInputError, match="frame 2 is 128x96 but the clip's header says 64x48"):
        segment_video(segmenter, mixed, tmp_path / "out2.mp4")
    assert video.MAX_FRAME_PIXELS == 3840 * 2160


def test_frame_rate_and_frame_count_are_capped(segmenter, tmp_path):
    fast = _clip_with(tmp_path / "fast.mp4", 64, 48, 1000, 30)  # 30 ms of clip, 1,000 frames a second
    with pytest.raises(VideoInputError, match="fast.mp4 runs at 1000 frames per second; the limit is 60"):
        segment_video(segmenter, fast, tmp_path / "o.mp4")
    many = _clip_with(tmp_path / "many.mp4", 64, 48, 25, 12)
    with pytest.raises(VideoInputError, match="many.mp4 has 12 frames; the limit is 10"):
        segment_video(segmenter, many, tmp_path / "o.mp4", max_frames=10)
    # A header that does not say how many frames there are: the decoder counts them.
    counted = _mjpeg_clip(tmp_path / "counted.avi", [(64, 48)] * 12)
    import medseg_core.video as video

    caps = video._FrameCaps("counted.avi", 64, 48, max_pixels=10**6, max_side=64, max_frames=10, max_seconds=600.0)
    decoded = []
    with pytest.raises(VideoInputError, match="counted.avi has more than 10 frames; the limit is 10"):
        for item in video._frames(str(counted), caps, depth=2):
            decoded.append(item[0])
    assert decoded == list(range(10))


def test_a_clip_whose_timestamps_start_late_is_timed_from_its_first_frame(tmp_path):
    """MPEG-TS and recorder files often start their clock seconds or hours in: the duration cap counts from the
    first frame, not from zero."""
    import av
    import numpy as np

    import medseg_core.video as video

    path = tmp_path / "late.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts, frame.time_base = 5 * 700 + i, Fraction(1, 5)  # 700 s in, 1.2 s long
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    caps = video._FrameCaps("late.mkv", 64, 48, max_pixels=10**6, max_side=64, max_frames=100, max_seconds=600.0)
    times = [t for _, t, _ in video._frames(str(path), caps, depth=2)]
    assert len(times) == 6 and times[0] >= 699 and times[-1] - times[0] < 2


def test_video_errors_do_not_show_server_paths(segmenter, clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    for path in (text, truncated):
        with pytest.raises(VideoInputError) as err:
            segment_video(segmenter, path, tmp_path / "o.mp4")
        assert str(tmp_path) not in str(err.value) and "/" not in str(err.value), str(err.value)


def test_should_stop_ends_the_run_its_threads_and_its_output(segmenter, clip, tmp_path):
    import threading

    from medseg_core.video import VideoCancelled

    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    threads = threading.active_count()
    out = tmp_path / "o.mp4"
    with pytest.raises(VideoCancelled, match="cancelled after 2 frames"):
        segment_video(segmenter, clip, out, should_stop=should_stop)
    assert len(asked) == 3 and not out.exists()
    assert threading.active_count() <= threads  # the decoder and encoder threads have ended
