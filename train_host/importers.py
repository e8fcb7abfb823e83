"""Importers: dance videos and motion capture, turned into takes the box could have recorded.

A take (``device.session``) pairs 64x48 grey frames with the audio they danced to,
aligned so that audio sample 0 is the time of frame 0 and frame i is at i / fps.
``import_video`` takes any video with a music track; ``import_mocap`` takes a
folder of the Tang/Jia/Mao dance dataset (skeletons at 25 fps, the song, and where
in the song the dance starts) and draws the skeleton as a camera would see it
(``train_host.skeleton``). The motiongram is computed later from the frames by the
same function the box runs live.

An import never leaves a half-written take: the take is written into a hidden
staging folder inside the output folder (``.importing-*``, which readers of the
sessions folder should skip) and moved into place, in one rename on the same
filesystem, only once it is complete. Every refusal is an ``ImportFailed`` whose
message is one line naming the input and what is wrong with it.

Truncation policy: a file that stops more than ``TRUNCATION_TOLERANCE_S`` before
the length it states is refused, not imported in part: a cut-off download or copy
should be noticed and fixed, not become a silently shorter take. Each stream is
held to its own stated length where the file gives one; where it gives only the
whole file's length, the longer of picture and sound must reach it (music may end
before the picture, but a cut file loses the ends of both). A decoding error
anywhere is refused too, and so is an MP4 cut before its index, which cannot even
be opened. Shortfalls within the tolerance are normal and are zero-padded; a mocap
song must likewise reach, within the tolerance, the end of the dance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from device.errors import CameraError, DanceSamplerError
from device.session import (SessionError, SessionInfo, SessionWriter, sanitize_label,
                            session_info)

log = logging.getLogger(__name__)

TRUNCATION_TOLERANCE_S = 1.0
"""A stream may end this much before the length its file states; more is truncation."""

STYLES = {"C": "cha-cha", "W": "waltz", "T": "tango", "R": "rumba"}
"""The dataset's folder letter (DANCE_<letter>_<n>) and the dance style it holds."""

_MOCAP_FOLDER = re.compile(r"^DANCE_([A-Z])_\d+$", re.IGNORECASE)
_STAGING_PREFIX = ".importing-"


class ImportFailed(DanceSamplerError, ValueError):
    """A video or motion-capture folder cannot be imported; the message says which and why."""


# ---- videos ----------------------------------------------------------------------


def import_video(path: str | os.PathLike, out_root: str | os.PathLike, *,
                 label: str | None = None, sample_rate: int, width: int = 64,
                 height: int = 48) -> SessionInfo:
    """Import a video with a music track as a new take in ``out_root``; returns its SessionInfo.

    The picture is resized to width x height grey at the video's own frame rate;
    the sound is mixed to mono, resampled to ``sample_rate`` and aligned so that
    sample 0 sounds with the first frame, then trimmed or zero-padded to exactly
    the frames' duration.
    """
    from device.camera.video import VideoFileCamera

    path = Path(path)
    _check_input_file(path)
    probe = _probe_video(path, sample_rate)
    label = sanitize_label(label if label is not None else path.stem)
    extra = {"source": path.name, "source_fps": probe.fps,
             "source_size": [probe.width, probe.height], "audio_codec": probe.audio_codec,
             "imported": _now()}

    try:
        camera = VideoFileCamera(path, fps=None, width=width, height=height)
    except CameraError as exc:
        raise ImportFailed(str(exc)) from None
    fps = camera.fps

    def frames() -> Iterable[np.ndarray]:
        try:
            while (frame := camera.read()) is not None:
                yield frame.image
        except CameraError as exc:
            raise ImportFailed(str(exc)) from None

    def audio(count: int) -> np.ndarray:
        video_end = probe.first_frame_s + count / fps
        _check_complete(path, "video stops", video_end, probe.video_stated_end_s)
        _check_complete(path, "audio stops", probe.audio_end_s, probe.audio_stated_end_s)
        # Where the file states only its overall length, a stream may legitimately
        # end early (music shorter than the picture), but not both: a cut file
        # loses the ends of all its streams together.
        _check_complete(path, "video and the audio both stop", max(video_end, probe.audio_end_s),
                        probe.file_stated_end_s)
        return _audio_window(probe.audio, probe.audio_start_s, probe.first_frame_s,
                             round(count * sample_rate / fps), sample_rate)

    try:
        return _write_take(out_root, label=label, fps=fps, width=width, height=height,
                           sample_rate=sample_rate, audio_source=f"import:video {path.name}",
                           extra=extra, frames=frames(), audio=audio, source=path)
    finally:
        camera.close()


@dataclasses.dataclass
class _VideoProbe:
    """What one pass over a video file tells before any frame is kept."""

    fps: float
    width: int
    height: int
    audio_codec: str
    first_frame_s: float            # stream time of the first decodable video frame
    video_stated_end_s: float | None  # where the file says each stream ends, if it says
    audio_stated_end_s: float | None
    file_stated_end_s: float | None   # where the file says its longest stream ends
    audio_end_s: float                # stream time where the decoded audio ends
    audio: np.ndarray               # mono float32 at the import's sample rate
    audio_start_s: float            # stream time of audio[0]


def _probe_video(path: Path, sample_rate: int) -> _VideoProbe:
    """Open, check the streams, find the first frame's time and decode all the audio."""
    import av

    container = _open(path, "a video")
    try:
        if not container.streams.video:
            raise ImportFailed(f"{path}: has no video stream")
        if not container.streams.audio:
            raise ImportFailed(f"{path}: has no audio track: a training take needs the music")
        video, audio = container.streams.video[0], container.streams.audio[0]
        if video.disposition & av.stream.Disposition.attached_pic:
            raise ImportFailed(f"{path}: its video stream is a still picture (cover art); "
                               "expected a dance video")
        rate = video.average_rate or video.guessed_rate
        if not rate:
            raise ImportFailed(f"{path}: video stream has no frame rate")
        decoder = _AudioDecoder(path, audio, sample_rate)
        first_frame: float | None = None
        try:
            for packet in container.demux(video, audio):
                if packet.stream.type == "audio":
                    decoder.feed(packet)
                elif first_frame is None:
                    # Only the first frame's time is needed here; the picture is
                    # decoded by VideoFileCamera, which times frames from it too.
                    for frame in packet.decode():
                        if frame.time is not None:
                            first_frame = frame.time
                            break
        except av.FFmpegError as exc:
            raise ImportFailed(f"{path}: cannot read the file ({_reason(exc)}); "
                               "it may be truncated or damaged") from None
        if first_frame is None:
            raise ImportFailed(f"{path}: no decodable video frames")
        samples = decoder.finish()
        return _VideoProbe(
            fps=float(rate), width=video.codec_context.width, height=video.codec_context.height,
            audio_codec=audio.codec_context.name, first_frame_s=float(first_frame),
            video_stated_end_s=_stream_end(video), audio_stated_end_s=_stream_end(audio),
            file_stated_end_s=_file_end(container), audio_end_s=decoder.end_s, audio=samples,
            audio_start_s=decoder.start_s)
    finally:
        container.close()


# ---- motion capture ---------------------------------------------------------------


def import_mocap(folder: str | os.PathLike, out_root: str | os.PathLike, *,
                 label: str | None = None, sample_rate: int, fps: float = 25.0,
                 width: int = 64, height: int = 48) -> SessionInfo:
    """Import one motion-capture folder as a new take in ``out_root``; returns its SessionInfo.

    The skeleton (placed in the room: ``center`` plus the joints) is drawn from the
    front into frames; skeleton frame i sounds at song time (start_position + i) / 25 s
    (shared/realdata/SOURCES.md). At another ``fps`` the joints are interpolated.
    """
    from train_host import skeleton

    folder = Path(folder)
    joints, start_position, length = _read_mocap(folder)
    song = folder / "audio.mp3"
    style = mocap_style(folder.name)
    label = sanitize_label(label if label is not None else (style or folder.name))
    extra = {"source": folder.name, "length": length, "start_position": start_position,
             "style": style, "bone_list_version": skeleton.BONE_LIST_VERSION,
             "imported": _now()}

    moving = skeleton.retime(joints, skeleton.SOURCE_FPS, fps)
    try:
        frames = skeleton.render(moving, width, height)
    except ValueError as exc:
        raise ImportFailed(f"{folder}: {exc}") from None
    samples, start_s, end_s = _decode_file_audio(song, sample_rate)
    # Song time 0 is the first decoded sample, as the dataset's own tools read the
    # song; the stream time of that sample (an MP3's encoder delay) is not music.
    end_s -= start_s
    dance_start = start_position / skeleton.SOURCE_FPS
    dance_end = dance_start + len(frames) / fps
    if end_s < dance_end - TRUNCATION_TOLERANCE_S:
        raise ImportFailed(f"{song}: the song ends at {end_s:.1f} s but the dance runs "
                           f"until {dance_end:.1f} s (start_position {start_position}, "
                           f"length {length} at 25 fps)")

    def audio(count: int) -> np.ndarray:
        return _audio_window(samples, 0.0, dance_start, round(count * sample_rate / fps),
                             sample_rate)

    return _write_take(out_root, label=label, fps=fps, width=width, height=height,
                       sample_rate=sample_rate, audio_source=f"import:mocap {folder.name}",
                       extra=extra, frames=iter(frames), audio=audio, source=folder)


def mocap_style(folder_name: str) -> str | None:
    """The dance style a dataset folder holds (DANCE_W_3 -> "waltz"), or None."""
    match = _MOCAP_FOLDER.match(folder_name)
    return STYLES.get(match.group(1).upper()) if match else None


def _read_mocap(folder: Path) -> tuple[np.ndarray, int, int]:
    """World-space joints (length, 23, 3), start_position and length, checked."""
    if not folder.is_dir():
        raise ImportFailed(f"{folder}: no such folder" if not folder.exists()
                           else f"{folder}: not a folder (expected a motion-capture folder)")
    missing = [name for name in ("audio.mp3", "skeletons.json", "config.json")
               if not (folder / name).is_file()]
    if missing:
        raise ImportFailed(f"{folder}: not a motion-capture folder: missing {', '.join(missing)}")
    config = _read_json(folder / "config.json")
    data = _read_json(folder / "skeletons.json")
    start = config.get("start_position") if isinstance(config, dict) else None
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ImportFailed(f"{folder / 'config.json'}: start_position must be a whole number "
                           f"of 25 fps frames, 0 or more, got {start!r}")
    if not isinstance(data, dict) or not {"length", "center", "skeletons"} <= data.keys():
        raise ImportFailed(f"{folder / 'skeletons.json'}: expected keys length, center "
                           "and skeletons")
    length = data["length"]
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ImportFailed(f"{folder / 'skeletons.json'}: length must be a whole number "
                           f"of frames, 2 or more, got {length!r}")
    try:
        bones = np.asarray(data["skeletons"], np.float64)
        center = np.asarray(data["center"], np.float64)
    except (TypeError, ValueError):
        raise ImportFailed(f"{folder / 'skeletons.json'}: skeletons and center must be "
                           "arrays of numbers") from None
    if bones.ndim != 3 or bones.shape[1:] != (23, 3) or center.ndim != 2 \
            or center.shape[1] != 3:
        raise ImportFailed(f"{folder / 'skeletons.json'}: expected skeletons [T, 23, 3] and "
                           f"center [T, 3], got {list(bones.shape)} and {list(center.shape)}")
    if min(len(bones), len(center)) < length:
        raise ImportFailed(f"{folder / 'skeletons.json'}: length says {length} frames but "
                           f"skeletons has {len(bones)} and center {len(center)}")
    # The joints are stored relative to the body's centre; adding it puts the
    # dancer back where they were on the floor, so travel shows in the frames.
    joints = bones[:length] + center[:length, None, :]
    if not np.isfinite(joints).all():
        bad = int((~np.isfinite(joints).all(axis=(1, 2))).sum())
        raise ImportFailed(f"{folder / 'skeletons.json'}: {bad} frames have missing "
                           "(non-finite) joint positions")
    return joints, start, length


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFailed(f"{path}: not readable JSON ({_reason(exc)})") from None


# ---- audio ------------------------------------------------------------------------


class _AudioDecoder:
    """Decodes one audio stream packet by packet to mono float32 at one sample rate.

    Channels are averaged after resampling (swresample's own downmix adds them at
    -3 dB each, which takes a loud stereo master past full scale). The samples
    are taken as contiguous from the first decoded frame, as decoders deliver them.
    """

    def __init__(self, path: Path, stream, sample_rate: int):
        import av

        self.path, self.stream = path, stream
        self._resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
        self._chunks: list[np.ndarray] = []
        self.start_s: float | None = None
        self.end_s = 0.0
        self._decoded_s = 0.0

    def feed(self, packet) -> None:
        """Decode one packet (or flush, for the demuxer's empty last packet)."""
        import av

        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            raise ImportFailed(f"{self.path}: cannot decode the audio at {self._decoded_s:.1f} s "
                               f"({_reason(exc)}); the file may be truncated or damaged") from None
        for frame in frames:
            self._take(frame)

    def finish(self) -> np.ndarray:
        """All the samples decoded so far, the resampler flushed."""
        for out in self._resampler.resample(None):
            self._chunks.append(out.to_ndarray().mean(axis=0))
        if self.start_s is None or not self._chunks:
            raise ImportFailed(f"{self.path}: the audio track holds no decodable sound")
        return np.concatenate(self._chunks).astype(np.float32, copy=False)

    def _take(self, frame) -> None:
        if self.start_s is None:
            self.start_s = float(frame.time) if frame.time is not None else 0.0
        self._decoded_s += frame.samples / frame.sample_rate
        # Where the sound decoded so far ends: by the frame's own time where it
        # has one, else by counting samples.
        end = (float(frame.time) + frame.samples / frame.sample_rate
               if frame.time is not None else self.start_s + self._decoded_s)
        self.end_s = max(self.end_s, end)
        for out in self._resampler.resample(frame):
            self._chunks.append(out.to_ndarray().mean(axis=0))


def _decode_file_audio(path: Path, sample_rate: int) -> tuple[np.ndarray, float, float]:
    """A whole audio file: (mono samples, stream time of sample 0, stream time of its end)."""
    import av

    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    container = _open(path, "audio")
    try:
        if not container.streams.audio:
            raise ImportFailed(f"{path}: has no audio stream")
        decoder = _AudioDecoder(path, container.streams.audio[0], sample_rate)
        try:
            for packet in container.demux(decoder.stream):
                decoder.feed(packet)
        except av.FFmpegError as exc:
            raise ImportFailed(f"{path}: cannot read the file ({_reason(exc)})") from None
        return decoder.finish(), decoder.start_s, decoder.end_s
    finally:
        container.close()


def _audio_window(samples: np.ndarray, samples_start_s: float, window_start_s: float,
                  count: int, sample_rate: int) -> np.ndarray:
    """Exactly ``count`` samples from stream time ``window_start_s`` on, zeros where none.

    ``samples[0]`` is at ``samples_start_s``: audio that starts after the window is
    padded with silence in front, audio that starts before it loses its lead.
    """
    offset = round((window_start_s - samples_start_s) * sample_rate)
    out = np.zeros(count, np.float32)
    src_from, dst_from = max(offset, 0), max(-offset, 0)
    take = max(0, min(count - dst_from, len(samples) - src_from))
    out[dst_from:dst_from + take] = samples[src_from:src_from + take]
    return out


# ---- checks shared by both importers -----------------------------------------------


def _check_input_file(path: Path) -> None:
    if not path.exists():
        raise ImportFailed(f"{path}: no such file")
    if not path.is_file():
        raise ImportFailed(f"{path}: not a file (expected a video)")


def _open(path: Path, what: str):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ImportFailed(f"{path}: cannot open as {what} ({_reason(exc)}); "
                           "not a media file, or cut off before its index") from None


def _stream_end(stream) -> float | None:
    """Where the file says this stream ends, in stream seconds; None if it does not say."""
    if stream.duration and stream.time_base:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    return None


def _file_end(container) -> float | None:
    """Where the file says its longest stream ends, in seconds; None if it does not say."""
    import av

    if container.duration:
        return ((container.start_time or 0) + container.duration) / av.time_base
    return None


def _check_complete(path: Path, what: str, end_s: float, stated_end_s: float | None) -> None:
    """Refuse a stream that stops well before the length its file states (see the policy)."""
    if stated_end_s is not None and end_s < stated_end_s - TRUNCATION_TOLERANCE_S:
        raise ImportFailed(f"{path}: the {what} at {end_s:.1f} s but the file says "
                           f"{stated_end_s:.1f} s; it looks truncated (a cut-off download "
                           "or copy?)")


# ---- writing a take atomically ------------------------------------------------------


def _write_take(out_root, *, label: str, fps: float, width: int, height: int,
                sample_rate: int, audio_source: str, extra: dict,
                frames: Iterable[np.ndarray], audio: Callable[[int], np.ndarray],
                source: Path) -> SessionInfo:
    """Write a take into a staging folder, then move it into ``out_root`` in one rename.

    ``audio(frame_count)`` gives the take's samples once the frames are known. On
    any failure (or interrupt) the staging folder and everything in it is removed.
    """
    out_root = Path(out_root)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_root))
    except OSError as exc:
        raise ImportFailed(f"{out_root}: cannot write takes here ({_reason(exc)})") from None
    try:
        # No flushing as it goes: the staging folder, not fsync, is what keeps a
        # failed import from leaving a take behind, and close() syncs everything.
        writer = SessionWriter(staging, label=label, fps=fps, width=width, height=height,
                               sample_rate=sample_rate, audio_source=audio_source,
                               extra=extra, flush_every_s=math.inf)
        try:
            count = 0
            for image in frames:
                if not writer.add_frame(image, count / fps):
                    raise ImportFailed(f"{source}: the session writer stopped taking frames "
                                       f"after {count} ({writer.stopped_reason})")
                count += 1
            if count == 0:
                raise ImportFailed(f"{source}: no frames to import")
            if not writer.add_audio(audio(count)):
                raise ImportFailed(f"{source}: the session writer stopped taking audio "
                                   f"({writer.stopped_reason})")
            writer.close()
        except BaseException:
            writer.abort(discarded=True)   # the staging folder goes below
            raise
        if writer.stopped_reason:
            raise ImportFailed(f"{source}: the take stopped early ({writer.stopped_reason})")
        final = _publish(Path(writer.path), out_root)
        info = session_info(final)
    except SessionError as exc:
        raise ImportFailed(f"{source}: cannot write the take ({exc})") from None
    except OSError as exc:
        if isinstance(exc, DanceSamplerError):
            raise
        raise ImportFailed(f"{source}: cannot write the take in {out_root} "
                           f"({_reason(exc)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("imported %s as %s: %d frames at %g fps, %.2f s", source, final, info.frames,
             fps, info.duration_s)
    return info


def _publish(take: Path, out_root: Path) -> Path:
    """Move a finished take out of staging under its own name, or name-2, name-3, ...

    Two imports in the same second with the same label would otherwise collide.
    os.rename onto an existing empty folder would replace it, so never rename
    onto anything that exists.
    """
    for n in range(1, 1000):
        final = out_root / (take.name if n == 1 else f"{take.name}-{n}")
        if not final.exists():
            os.rename(take, final)
            return final
    raise ImportFailed(f"{out_root}: too many takes named {take.name}")


# ---- labels and small helpers -------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong, without FFmpeg's errno and the path again."""
    if getattr(exc, "strerror", None):
        return str(exc.strerror)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- command line -------------------------------------------------------------------


def add_commands(subparsers) -> None:
    """Add ``import-video`` and ``import-mocap`` to a ``python -m train_host`` parser."""
    video = subparsers.add_parser("import-video",
                                  help="turn dance videos with their music into takes")
    video.add_argument("inputs", nargs="+", metavar="FILE", help="video files with a music track")
    mocap = subparsers.add_parser(
        "import-mocap", help="turn motion-capture folders (skeletons + song) into takes")
    mocap.add_argument("inputs", nargs="+", metavar="DIR",
                       help="folders holding audio.mp3, skeletons.json and config.json")
    mocap.add_argument("--fps", type=float, default=25.0,
                       help="frame rate of the take (default: 25, the capture's own)")
    for parser in (video, mocap):
        parser.add_argument("--out", required=True, help="sessions folder to add the takes to")
        parser.add_argument("--label",
                            help="label for every take (default: from each input's name)")
        parser.add_argument("--config", help="training config (default: config/train.yaml)")
    video.set_defaults(func=_import_command, importer=import_video, options=())
    mocap.set_defaults(func=_import_command, importer=import_mocap, options=("fps",))


def _import_command(args) -> int:
    """Import every input; report each failure on one line and carry on. 1 if any failed."""
    from train_host.config import load_train_config

    cfg = load_train_config(args.config)
    failed = 0
    for source in args.inputs:
        options = {name: getattr(args, name) for name in args.options}
        try:
            info = args.importer(source, args.out, label=args.label,
                                 sample_rate=cfg.data.sample_rate,
                                 width=cfg.motiongram.frame_width,
                                 height=cfg.motiongram.frame_height, **options)
        except DanceSamplerError as exc:
            if getattr(args, "debug", False):
                raise
            print(f"dancesampler: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{info.path}  {info.label}  {info.duration_s:.2f} s  {info.frames} frames  "
              f"audio {info.audio_s:.2f} s")
    return 1 if failed else 0
