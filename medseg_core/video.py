"""Endoscopy video through the same ``Segmenter``: decode (PyAV), segment, write an H.264 MP4 with the overlay and a
CSV of per-frame statistics.

    summary = segment_video(Segmenter.from_pretrained("unet_lite0.polyp_fast"), "clip.mp4", "out.mp4", "frames.csv")
    chart = plot_lesion_area(summary.rows)          # RGB image: lesion area (% of frame) over time

    python -m medseg_core.video clip.mp4 --out out.mp4 --csv frames.csv --model unet_lite0.polyp_fast

Decoding runs in a thread ahead of the network (a bounded queue), so reading frame n+1 overlaps segmenting frame n;
frames go through the network ``batch_size`` at a time. ``smoothing`` is an exponential moving average of the
network's probabilities over frames (0 = off): it steadies the mask between frames at the cost of some lag.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .batch import VIDEO_MODEL, default_model_name
from .cli import setup_logging, write_json
from .inference import Segmenter

__all__ = [
    "MAX_FPS",
    "MAX_FRAMES",
    "MAX_FRAME_PIXELS",
    "MAX_SECONDS",
    "MAX_SIDE",
    "FrameRow",
    "VideoCancelled",
    "VideoInputError",
    "VideoSummary",
    "encode_video",
    "events_markdown",
    "lesion_events",
    "main",
    "plot_lesion_area",
    "segment_video",
    "write_rows_csv",
]

log = logging.getLogger(__name__)

#: Longest clip accepted, in seconds (an examination's highlight, not a whole recording).
MAX_SECONDS = 600.0
#: Longest frame side accepted, in pixels: 4K UHD passes, 8K is refused.
MAX_SIDE = 3840
#: Most pixels in one frame (4K UHD), checked on every decoded frame, not only on the clip's header.
MAX_FRAME_PIXELS = 3840 * 2160
#: Highest frame rate and most frames accepted (ten minutes at 30 fps): each frame is one network pass.
MAX_FPS = 60.0
MAX_FRAMES = 18_000
#: Per-frame CSV columns, in order.
CSV_FIELDS = ("frame", "time_s", "lesion_present", "presence_score", "lesion_percent", "lesion_count",
              "mean_confidence")
#: A lesion event lasts at least this many frames (shorter runs are flickers, not alarms)...
MIN_EVENT_FRAMES = 5
#: ...and a gap of at most this many frames without a lesion does not end it.
MAX_EVENT_GAP = 2

ProgressFn = Callable[[int, int | None], None]


class VideoInputError(ValueError):
    """A clip we cannot segment (not a video, damaged, empty, too large or too long); the message says why."""


class VideoCancelled(RuntimeError):
    """Raised inside :func:`segment_video` when its ``should_stop`` callable says the run is no longer wanted."""


class _FrameRefused(VideoInputError):
    """A decoded frame over the caps (raised in the decoder thread, re-raised as it is by the consumer)."""


def _ffmpeg_reason(err: BaseException) -> str:
    """An FFmpeg error's reason without the file name (the page never shows server paths)."""
    return getattr(err, "strerror", None) or type(err).__name__


@dataclass
class FrameRow:
    """Statistics of one output frame."""

    frame: int
    time_s: float
    lesion_present: int  # 1 when the frame's lesion-present decision says so (medseg_core.presence), else 0
    presence_score: float
    lesion_percent: float
    lesion_count: int
    mean_confidence: float | None


@dataclass
class VideoSummary:
    """What :func:`segment_video` did.

    Attributes:
        frames: frames segmented and written.
        fps_in: the clip's frame rate; ``fps_out`` the output's (the same: every frame is kept).
        duration_s: the clip's duration (frames / fps_in).
        processing_fps: frames segmented per second of wall time, decoding and encoding included.
        seconds: wall time of the whole run.
        width, height: frame size (the output is the same, trimmed to even sides for yuv420p).
        rows: one :class:`FrameRow` (as a dict) per frame, with the ``CSV_FIELDS`` keys.
        events: lesion events (:func:`lesion_events`): runs of frames with a lesion present.
        events_per_minute: events per minute of clip; on a clip known to hold no lesion, false alarms per minute.
    """

    in_path: str
    out_path: str
    csv_path: str | None
    frames: int
    fps_in: float
    fps_out: float
    duration_s: float
    processing_fps: float
    seconds: float
    width: int
    height: int
    smoothing: float
    batch_size: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    events_per_minute: float = 0.0
    frames_with_lesion: int = 0


@dataclass
class _ClipInfo:
    width: int
    height: int
    rate: Fraction
    frames: int | None  # from the container; None when it does not say
    duration_s: float | None


def _open_capped(path: str | os.PathLike, max_pixels: int) -> Any:
    """``av.open`` with FFmpeg's ``max_pixels`` set on the first stream, so that probing refuses a larger frame
    before allocating it; formats that expose no stream before probing (MPEG-TS, a file without streams) open
    without it, and the decoder's own cap and :func:`_check_frame` still apply."""
    import av

    try:
        return av.open(os.fspath(path), stream_options=[{"max_pixels": str(max_pixels)}])
    except ValueError as err:
        if "stream_options" not in str(err):
            raise
        return av.open(os.fspath(path))


def probe_video(path: str | os.PathLike, max_seconds: float = MAX_SECONDS, max_side: int = MAX_SIDE,
                max_fps: float = MAX_FPS, max_frames: int = MAX_FRAMES,
                max_pixels: int = MAX_FRAME_PIXELS) -> _ClipInfo:
    """Open a clip's header and check it: a readable video stream, at most ``max_side`` pixels a side and
    ``max_pixels`` a frame, ``max_seconds`` long, ``max_fps`` frames a second and ``max_frames`` frames. Raises
    :class:`VideoInputError` with a one-line reason. The header can lie: :func:`segment_video` checks every decoded
    frame again."""
    import av

    name = os.path.basename(os.fspath(path))
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise VideoInputError(f"{name} is empty: upload an MP4, MOV, AVI, MKV or WebM clip")
    try:
        with _open_capped(path, max_pixels) as container:
            if not container.streams.video:
                raise VideoInputError(f"{name} contains no video frames (no video stream; is it an audio file?)")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            frames = stream.frames or None
    except VideoInputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise VideoInputError(f"{name} is not a video we can read, or it is damaged or truncated "
                              f"({_ffmpeg_reason(err)})") from err
    if not width or not height:
        raise VideoInputError(f"{name} has a video stream without a readable frame size: its frames are over "
                              f"{max_pixels / 1e6:.1f} MP, or the file is damaged")
    if max(width, height) > max_side:
        raise VideoInputError(f"{name} is {width}x{height}; the largest frame side accepted is {max_side} pixels. "
                              "Downscale the clip (e.g. to 1080p) and try again.")
    if width * height > max_pixels:
        raise VideoInputError(f"{name} is {width}x{height} ({width * height / 1e6:.1f} MP); the largest frame "
                              f"accepted is {max_pixels / 1e6:.1f} MP. Downscale the clip and try again.")
    if duration is not None and duration > max_seconds:
        raise VideoInputError(f"{name} lasts {duration / 60:.1f} min; the limit is {max_seconds / 60:.0f} min. "
                              "Cut the part to examine and try again.")
    if float(rate) > max_fps:
        raise VideoInputError(f"{name} runs at {float(rate):.0f} frames per second; the limit is {max_fps:.0f}. "
                              "Re-encode it at a lower frame rate and try again.")
    expected = frames or (round(duration * float(rate)) if duration is not None else None)
    if expected is not None and expected > max_frames:
        raise VideoInputError(f"{name} has {expected} frames; the limit is {max_frames}. Cut the part to examine "
                              "and try again.")
    return _ClipInfo(width, height, Fraction(rate), frames, duration)


@dataclass
class _FrameCaps:
    """What every decoded frame must satisfy: the header's size, at most ``max_pixels``, at most ``max_frames``
    frames and ``max_seconds`` of timestamps."""

    name: str
    width: int
    height: int
    max_pixels: int
    max_side: int
    max_frames: int
    max_seconds: float


def _packet_size(packet: Any) -> tuple[int, int] | None:
    """(width, height) an MJPEG packet declares in its JPEG header (read without decoding), else None."""
    import io

    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(bytes(packet))) as im:
            return im.size
    except Exception:  # noqa: BLE001 - not a JPEG, or not readable: the size stays unknown
        return None


def _check_frame(caps: _FrameCaps, index: int, width: int, height: int, time_s: float) -> None:
    """Refuse a decoded frame over the caps or of another size than the header's, before it is converted."""
    what = f"{caps.name}: frame {index}"
    if width * height > caps.max_pixels or max(width, height) > caps.max_side:
        raise _FrameRefused(f"{what} is {width}x{height}; the largest frame accepted is {caps.max_pixels / 1e6:.1f} "
                            f"MP and {caps.max_side} pixels a side")
    if (width, height) != (caps.width, caps.height):
        raise _FrameRefused(f"{what} is {width}x{height} but the clip's header says {caps.width}x{caps.height}; "
                            "frames of changing size are not accepted")
    if index >= caps.max_frames:
        raise _FrameRefused(f"{caps.name} has more than {caps.max_frames} frames; the limit is {caps.max_frames}. "
                            "Cut the part to examine and try again.")
    if time_s == time_s and time_s > caps.max_seconds + 1.0:
        raise _FrameRefused(f"{what} is at {time_s / 60:.1f} min; the limit is {caps.max_seconds / 60:.0f} min. "
                            "Cut the part to examine and try again.")


def _decode(path: str, out: queue.Queue, stop: threading.Event, caps: _FrameCaps) -> None:
    """Decoder thread: puts ``(index, time_s, rgb)`` items, then ``None``; an exception is put as the item.

    FFmpeg is told the pixel cap (``max_pixels``), so a frame larger than its header claims fails in the decoder
    before it is allocated; every decoded frame is checked again (:func:`_check_frame`) before it is converted."""
    import av

    index, start = 0, float("nan")
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads
            stream.codec_context.options = {"max_pixels": str(caps.max_pixels)}
            for packet in container.demux(stream):
                if stop.is_set():
                    break
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    size = _packet_size(packet) if stream.codec_context.name == "mjpeg" else None
                    if size is not None:
                        _check_frame(caps, index, *size, float("nan"))
                    raise
                for frame in decoded:
                    t = float(frame.time) if frame.time is not None else float("nan")
                    if start != start:  # the duration counts from the first frame (MPEG-TS streams start later)
                        start = t
                    _check_frame(caps, index, frame.width, frame.height, t - start)
                    out.put((index, t, frame.to_ndarray(format="rgb24")))
                    index += 1
                    if stop.is_set():
                        break
        out.put(None)
    except Exception as err:  # handed to the consumer, which raises it in its own thread
        out.put(err.with_traceback(None))  # no frame of this thread (its decoder and threads) kept alive by it


def _frames(path: str, caps: _FrameCaps, depth: int) -> Iterator[tuple[int, float, np.ndarray]]:
    """Frames decoded ahead in a thread, in order; a decoding error is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_decode, args=(path, q, stop, caps), name="video-decode", daemon=True)
    thread.start()
    done = 0
    try:
        while (item := q.get()) is not None:
            if isinstance(item, _FrameRefused):
                raise VideoInputError(str(item)) from None
            if isinstance(item, Exception):
                name = os.path.basename(path)
                raise VideoInputError(f"{name} could not be decoded after {done} frames; the file looks damaged or "
                                      f"truncated ({_ffmpeg_reason(item)})") from item
            done += 1
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a decoder waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


class _Encoder:
    """H.264 ``yuv420p`` MP4 writer (plays in Chromium), fed from a thread so encoding overlaps the network."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: Fraction, depth: int = 8,
                 crf: int = 23, preset: str = "veryfast") -> None:
        import av

        self.width, self.height = width - width % 2, height - height % 2  # 4:2:0 chroma needs even sides
        # faststart: the index at the front, so a browser starts playing before the whole file has arrived.
        self._container = av.open(os.fspath(path), "w", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("h264", rate=rate)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import av

        while (rgb := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: self.height, : self.width]),
                                                   format="rgb24")
                self._container.mux(self._stream.encode(frame))
            except Exception as err:  # re-raised by close() in the caller's thread
                self._error = err

    def write(self, rgb: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(rgb)

    def abort(self) -> None:
        """Stop without encoding the frames still queued or flushing the encoder (the output is thrown away)."""
        self._error = self._error or VideoCancelled("encoding stopped")
        self._queue.put(None)
        self._thread.join()
        self._container.close()
        self._release()

    def _release(self) -> None:
        # The codec context holds FFmpeg's and x264's threads until it is freed; a traceback that keeps this
        # object alive (a cancelled run's) must not keep them.
        self._stream = self._container = None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is None:
                self._container.mux(self._stream.encode(None))  # flush the encoder's delayed frames
        finally:
            self._container.close()
            self._release()
        if self._error is not None:
            raise self._error


def encode_video(frames: Sequence[np.ndarray] | Iterator[np.ndarray], path: str | os.PathLike,
                 fps: float | Fraction = 25.0, crf: int = 23) -> Path:
    """Write RGB ``uint8`` frames (H, W, 3), all the same size, to an H.264 ``yuv420p`` MP4."""
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    encoder: _Encoder | None = None
    for rgb in frames:
        if encoder is None:
            encoder = _Encoder(path, rgb.shape[1], rgb.shape[0], rate, crf=crf)
        encoder.write(rgb)
    if encoder is None:
        raise ValueError("no frames to write")
    encoder.close()
    return Path(path)


def segment_video(
    segmenter: Segmenter,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    *,
    batch_size: int = 1,
    smoothing: float = 0.0,
    max_seconds: float = MAX_SECONDS,
    max_side: int = MAX_SIDE,
    max_fps: float = MAX_FPS,
    max_frames: int = MAX_FRAMES,
    max_pixels: int = MAX_FRAME_PIXELS,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> VideoSummary:
    """Segment every frame of a clip and write the overlay video (and the per-frame CSV).

    Args:
        segmenter: the same ``Segmenter`` images use; its default post-processing applies to every frame.
        in_path: any clip FFmpeg reads (MP4, MOV, AVI, MKV, WebM).
        out_path: the H.264 ``yuv420p`` MP4 to write (same size and frame rate as the input).
        csv_path: where to write one row per frame (``CSV_FIELDS``); None for none.
        batch_size: frames per network call (1 gives byte-identical frames to segmenting each image alone;
            larger batches differ by float rounding only).
        smoothing: weight of the previous frames in an exponential moving average of the probabilities,
            in [0, 1): ``p_t = smoothing * p_{t-1} + (1 - smoothing) * network_t``; 0 turns it off.
        max_seconds, max_side, max_fps, max_frames, max_pixels: caps; a clip over any is refused (:func:`probe_video`
            reads its header, and every decoded frame is checked again: its size, its index and its time).
        progress: called as ``progress(frames_done, total_frames_or_None)`` after each batch.
        should_stop: asked before every batch of frames; when it returns True the run stops with
            :class:`VideoCancelled`, its threads ended and the half-written output removed.

    Returns:
        A :class:`VideoSummary`. Raises :class:`VideoInputError` for clips that cannot be segmented, before
        anything is written.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    in_path, name = os.fspath(in_path), os.path.basename(os.fspath(in_path))
    info = probe_video(in_path, max_seconds=max_seconds, max_side=max_side, max_fps=max_fps, max_frames=max_frames,
                       max_pixels=max_pixels)
    started = time.perf_counter()
    caps = _FrameCaps(name, info.width, info.height, max_pixels, max_side,
                      min(max_frames, int(max_seconds * info.rate) + 1), max_seconds)
    frames = _frames(in_path, caps, depth=2 * batch_size + 2)
    first = next(frames, None)
    if first is None:
        raise VideoInputError(f"{name} contains no video frames")
    encoder = _Encoder(out_path, info.width, info.height, info.rate, depth=2 * batch_size + 2)
    rows: list[FrameRow] = []
    ema: np.ndarray | None = None
    try:
        for item in _batches(frames, first, batch_size):
            if should_stop is not None and should_stop():
                raise VideoCancelled(f"{name}: cancelled after {len(rows)} frames")
            probs_small = segmenter.network_probs([rgb for _, _, rgb in item])
            for (index, t, rgb), p in zip(item, probs_small):
                if smoothing > 0:
                    ema = p if ema is None else smoothing * ema + (1.0 - smoothing) * p
                    p = ema
                result = segmenter.result_from_probs(rgb, segmenter.probs_at(p, rgb.shape[0], rgb.shape[1]))
                encoder.write(result.overlay)
                time_s = t if t == t else index / float(info.rate)
                s = result.stats
                rows.append(FrameRow(index, round(time_s, 4), int(s["lesion_present"]), s["presence_score"],
                                     s["lesion_percent"], s["lesion_count"], s["mean_confidence"]))
            if progress is not None:
                progress(len(rows), info.frames)
        # The container's own frame count (a small margin for edit lists): fewer decoded frames means a cut file.
        if info.frames is not None and len(rows) + 2 < min(info.frames, int(max_seconds * info.rate)):
            raise VideoInputError(f"{name} ends after {len(rows)} of its {info.frames} frames; the file looks "
                                  "truncated")
    except BaseException as err:
        with contextlib.suppress(Exception):
            encoder.abort()
        if isinstance(err, (VideoInputError, VideoCancelled)):
            Path(out_path).unlink(missing_ok=True)  # a damaged or cancelled clip leaves no half-written output
        raise
    finally:
        frames.close()
    encoder.close()
    seconds = time.perf_counter() - started
    fps = float(info.rate)
    summary = VideoSummary(
        in_path=in_path, out_path=os.fspath(out_path), csv_path=os.fspath(csv_path) if csv_path else None,
        frames=len(rows), fps_in=fps, fps_out=fps, duration_s=len(rows) / fps, processing_fps=len(rows) / seconds,
        seconds=seconds, width=info.width, height=info.height, smoothing=smoothing, batch_size=batch_size,
        rows=[asdict(r) for r in rows],
    )
    summary.events = lesion_events(summary.rows, fps)
    summary.events_per_minute = 60.0 * len(summary.events) / max(summary.duration_s, 1e-9)
    summary.frames_with_lesion = sum(r["lesion_present"] for r in summary.rows)
    if csv_path:
        write_rows_csv(summary.rows, csv_path)
    log.info("%s: %d frames at %.2f fps in %.1f s (%.1f frames/s)", name, summary.frames, fps, seconds,
             summary.processing_fps)
    return summary


def _batches(frames: Iterator[tuple[int, float, np.ndarray]], first: tuple[int, float, np.ndarray],
             size: int) -> Iterator[list[tuple[int, float, np.ndarray]]]:
    """Groups of ``size`` frames (the last may be shorter), starting with ``first``."""
    batch = [first]
    for item in frames:
        if len(batch) == size:
            yield batch
            batch = []
        batch.append(item)
    yield batch


def lesion_events(rows: Sequence[dict[str, Any]], fps: float, min_frames: int = MIN_EVENT_FRAMES,
                  max_gap: int = MAX_EVENT_GAP) -> list[dict[str, Any]]:
    """Lesion events of a clip: runs of frames whose ``lesion_present`` is set, a gap of up to ``max_gap`` frames
    without one bridged, kept when they span at least ``min_frames`` frames (one-frame flickers are not alarms).
    Each event: ``start_frame``, ``end_frame`` (inclusive), ``start_s``, ``end_s``, ``frames`` (with a lesion),
    ``peak_score`` (the best presence score in it)."""
    runs: list[list[int]] = []
    for i, r in enumerate(rows):
        if not r["lesion_present"]:
            continue
        if runs and i - runs[-1][-1] <= max_gap + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    events = []
    for run in runs:
        first, last = rows[run[0]], rows[run[-1]]
        if last["frame"] - first["frame"] + 1 < min_frames:
            continue
        events.append({"start_frame": first["frame"], "end_frame": last["frame"], "start_s": first["time_s"],
                       "end_s": round(last["time_s"] + 1.0 / fps, 4), "frames": len(run),
                       "peak_score": max(rows[i]["presence_score"] for i in run)})
    return events


def events_markdown(summary: VideoSummary, lesion_free: bool = False) -> str:
    """The clip's lesion events as text: how many, per minute (false alarms per minute when the clip is known to
    hold no lesion), and the first few with their times."""
    minutes = summary.duration_s / 60.0
    what = "false-alarm events" if lesion_free else "lesion events"
    lines = [f"**{len(summary.events)} {what}** in {summary.duration_s:.1f} s "
             f"({summary.events_per_minute:.1f} per minute; an event is at least {MIN_EVENT_FRAMES} frames with a "
             f"lesion, gaps of up to {MAX_EVENT_GAP} frames bridged) · a lesion found in "
             f"{summary.frames_with_lesion} of {summary.frames} frames  "]
    if minutes <= 0:
        return lines[0]
    lines += [f"- {e['start_s']:.2f}-{e['end_s']:.2f} s (frames {e['start_frame']}-{e['end_frame']}, peak score "
              f"{e['peak_score']:.2f})" for e in summary.events[:10]]
    if len(summary.events) > 10:
        lines.append(f"- ... and {len(summary.events) - 10} more (see the CSV)")
    return "\n".join(lines)


def write_rows_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Per-frame rows -> CSV with the ``CSV_FIELDS`` columns (empty ``mean_confidence`` when no lesion)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def plot_lesion_area(rows: Sequence[dict[str, Any]], width: int = 800, height: int = 260) -> np.ndarray:
    """An RGB ``uint8`` chart (height, width, 3) of lesion area (% of the frame) over time (s), drawn with cv2.

    ``rows`` are :attr:`VideoSummary.rows` (keys ``time_s`` and ``lesion_percent``); an empty list gives an
    empty chart with its axes.
    """
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 56, 16, 34, 36  # room above for the title (and for a viewer's own label)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    times = np.array([float(r["time_s"]) for r in rows], np.float64)
    area = np.array([float(r["lesion_percent"]) for r in rows], np.float64)
    t_max = float(times.max()) if len(times) and times.max() > 0 else 1.0
    a_max = max(5.0, float(np.ceil(area.max() / 5) * 5)) if len(area) else 5.0
    grey, dark, font = (200, 200, 200), (60, 60, 60), cv2.FONT_HERSHEY_SIMPLEX
    for k in range(5):  # horizontal grid lines and their labels
        y = round(y1 - (y1 - y0) * k / 4)
        cv2.line(img, (x0, y), (x1, y), grey, 1)
        cv2.putText(img, f"{a_max * k / 4:g}%", (4, y + 4), font, 0.4, dark, 1, cv2.LINE_AA)
    for k in range(5):
        x = round(x0 + (x1 - x0) * k / 4)
        cv2.putText(img, f"{t_max * k / 4:.1f}s", (x - 14, height - 14), font, 0.4, dark, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), dark, 1)
    if len(rows):
        xs = x0 + (x1 - x0) * times / t_max
        ys = y1 - (y1 - y0) * area / a_max
        points = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
        cv2.polylines(img, [points], False, (220, 40, 40), 2, cv2.LINE_AA)
    title = "lesion area over time"
    (tw, _), _ = cv2.getTextSize(title, font, 0.45, 1)
    # Top centre: image viewers put their own labels and buttons in the corners.
    cv2.putText(img, title, ((x0 + x1 - tw) // 2, y0 - 10), font, 0.45, dark, 1, cv2.LINE_AA)
    return img


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m medseg_core.video", description=(
        "Segment every frame of an endoscopy clip: writes an H.264 MP4 with the lesions outlined and a CSV of "
        "per-frame lesion area, count and confidence."))
    p.add_argument("input", help="the clip (MP4, MOV, AVI, MKV, WebM)")
    p.add_argument("--out", required=True, help="output MP4")
    p.add_argument("--csv", help="per-frame statistics CSV")
    p.add_argument("--plot", help="also write the lesion-area chart to this PNG")
    p.add_argument("--model", default=default_model_name(video=True),
                   help=f"weights folder, weights/ name or Hub repo id (default: the fast {VIDEO_MODEL})")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto", help="network engine")
    p.add_argument("--postprocess", nargs="*", default=None,
                   help="'recorded' (default: the chain in the weights' config), 'none', or step names")
    p.add_argument("--batch-size", type=int, default=1, help="frames per network call")
    p.add_argument("--smoothing", type=float, default=0.0, help="EMA weight of previous frames' probabilities, [0, 1)")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="refuse longer clips")
    p.add_argument("--max-side", type=int, default=MAX_SIDE, help="refuse clips with a larger frame side (pixels)")
    p.add_argument("--max-fps", type=float, default=MAX_FPS, help="refuse clips with a higher frame rate")
    p.add_argument("--max-frames", type=int, default=MAX_FRAMES, help="refuse clips with more frames")
    p.add_argument("--presence", choices=["recorded", "none"], default="recorded",
                   help="'recorded' (default): the lesion-present rule recorded with the weights decides each frame; "
                        "'none': any region counts")
    p.add_argument("--lesion-free", action="store_true",
                   help="the clip is known to hold no lesion: its lesion events are reported as false alarms")
    p.add_argument("--json", help="write the summary (per-frame rows and lesion events) to this JSON file")
    p.add_argument("--device", default=None, help="cpu or cuda")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for a clip that cannot be segmented."""
    from tqdm.auto import tqdm

    args = parse_args(argv)
    setup_logging()
    kwargs: dict[str, Any] = {"backend": args.backend, "apply_presence": args.presence}
    if args.postprocess is not None:
        kwargs["postprocess"] = args.postprocess
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, **kwargs)
    bar = tqdm(desc="segment", unit="frame")

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        summary = segment_video(segmenter, args.input, args.out, args.csv, batch_size=args.batch_size,
                                smoothing=args.smoothing, max_seconds=args.max_seconds, max_side=args.max_side,
                                max_fps=args.max_fps, max_frames=args.max_frames, progress=progress)
    except VideoInputError as err:
        log.error("%s", err)
        return 2
    finally:
        bar.close()
    if args.plot:
        cv2.imwrite(args.plot, cv2.cvtColor(plot_lesion_area(summary.rows), cv2.COLOR_RGB2BGR))
    log.info("wrote %s (%d frames, %.1f frames/s)%s", summary.out_path, summary.frames, summary.processing_fps,
             f" and {summary.csv_path}" if summary.csv_path else "")
    print(events_markdown(summary, lesion_free=args.lesion_free).replace("**", ""))
    if args.json:
        rule = segmenter.presence_rule()
        write_json(args.json, {**asdict(summary), "model": segmenter.name, "lesion_free": args.lesion_free,
                               "presence": rule.to_config() if rule else None})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
