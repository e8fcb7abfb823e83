"""Importers: real dance videos and motion capture become aligned takes, or a clear refusal.

The real clips and mocap folders come from ../shared/realdata (see SOURCES.md);
tests that need them skip, saying why, where that folder is absent. Broken inputs
(no audio track, cut-off files, not a video) are made here from the real ones or
with PyAV, and every refusal must leave the output folder exactly as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from device.motiongram import motiongram
from device.session import read_session
from tests.conftest import REALDATA, real_video, write_video
from train_host import importers, skeleton
from train_host.importers import ImportFailed, import_mocap, import_video

av = pytest.importorskip("av")

SR = 22050
MOCAP = REALDATA / "mocap"


def real_mocap(name: str) -> Path:
    """A real motion-capture folder from ../shared/realdata, or skip saying why."""
    path = MOCAP / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (see shared/realdata/SOURCES.md)")
    return path


def world_joints(folder: Path) -> tuple[np.ndarray, dict]:
    data = json.loads((folder / "skeletons.json").read_text())
    n = data["length"]
    joints = np.asarray(data["skeletons"])[:n] + np.asarray(data["center"])[:n, None]
    return joints, data


def assert_untouched(out_root: Path) -> None:
    """No take and no staging folder left behind (the folder may exist, empty)."""
    left = sorted(p.name for p in out_root.iterdir()) if out_root.exists() else []
    assert left == [], f"left behind in {out_root}: {left}"


def one_line(exc: pytest.ExceptionInfo, *must_contain: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    for text in must_contain:
        assert text in message, message
    return message


# ---- pure pieces ------------------------------------------------------------------


def test_audio_window_pads_late_audio_and_drops_early_lead():
    samples = np.arange(1, 11, dtype=np.float32)          # 10 samples at 10 Hz
    # Audio starts 0.3 s after the window: three zeros first.
    late = importers._audio_window(samples, 0.3, 0.0, 6, 10)
    assert late.tolist() == [0, 0, 0, 1, 2, 3]
    # Audio starts 0.2 s before the window: its first two samples are dropped.
    early = importers._audio_window(samples, 0.0, 0.2, 4, 10)
    assert early.tolist() == [3, 4, 5, 6]
    # Past the end of the audio: zeros, and always exactly the count asked for.
    tail = importers._audio_window(samples, 0.0, 0.8, 5, 10)
    assert tail.tolist() == [9, 10, 0, 0, 0] and tail.dtype == np.float32
    assert importers._audio_window(samples, 0.0, 5.0, 3, 10).tolist() == [0, 0, 0]


@pytest.mark.parametrize("folder, style", [
    ("DANCE_C_2", "cha-cha"), ("DANCE_W_14", "waltz"), ("DANCE_T_1", "tango"),
    ("DANCE_R_9", "rumba"), ("dance_w_3", "waltz"), ("DANCE_X_1", None), ("salsa", None)])
def test_mocap_style_from_the_folder_name(folder, style):
    assert importers.mocap_style(folder) == style


def _encode_wav(path: Path, left: np.ndarray, right: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        pcm = np.round(np.stack([left, right]) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.T.reshape(1, -1).copy(), format="s16",
                                           layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_audio_is_mixed_to_mono_by_averaging_and_resampled_in_place(tmp_path):
    rate = 48000
    t = np.arange(2 * rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    burst = np.zeros_like(t)
    burst[rate:rate + 48] = 0.4                    # 1 ms at 1.0 s, in the left channel only
    path = tmp_path / "stereo.wav"
    _encode_wav(path, tone + burst, tone, rate)
    samples, start, end = importers._decode_file_audio(path, SR)
    assert start == 0.0 and end == pytest.approx(2.0)
    assert len(samples) == 2 * SR and samples.dtype == np.float32
    # Both channels carry the tone at 0.5: the mean keeps 0.5 (swresample's own
    # -3 dB downmix would give 0.71).
    assert np.abs(samples[SR // 4:SR // 2]).max() == pytest.approx(0.5, abs=0.01)
    # The burst comes out at half its height, where it went in (no resampler delay).
    rest = samples - (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32)
    peak = int(np.argmax(rest))
    assert SR <= peak <= SR + 22 and rest[peak] == pytest.approx(0.2, abs=0.03)


# ---- the skeleton -----------------------------------------------------------------


@pytest.mark.parametrize("take", ["DANCE_C_2", "DANCE_W_1"])
def test_bones_keep_their_length_through_a_take(take):
    """The bones (the dataset's own drawing script's) join joints that stay a fixed distance apart.

    Optical mocap has soft-tissue noise, so "fixed" is within some percent. (This
    does not single the topology out: in ballroom holds many non-bone pairs are
    nearly rigid too, which is why the list is the source's, not inferred.)
    """
    joints, _ = world_joints(real_mocap(take))
    full = skeleton.with_virtual_joints(joints)

    def variation(a, b):
        length = np.linalg.norm(full[:, a] - full[:, b], axis=-1)
        return length.std() / length.mean()

    bones = [variation(a, b) for a, b in skeleton.BONES]
    assert max(bones) < 0.25 and np.median(bones) < 0.12, bones


def test_the_up_axis_is_found_whichever_way_the_data_is_turned():
    joints, _ = world_joints(real_mocap("DANCE_W_1"))
    up, sign, across = skeleton.find_axes(joints)
    assert (up, sign) == (1, 1)
    # The same dance stored z-down: (x, y, z) -> (x, z, -y).
    turned = np.stack([joints[..., 0], joints[..., 2], -joints[..., 1]], axis=-1)
    where = {0: 0, 2: 1}                          # old axis -> its index in the turned data
    assert skeleton.find_axes(turned) == (2, -1, where[across])
    # ... and it is the same picture.
    np.testing.assert_array_equal(skeleton.render(joints[:50]), skeleton.render(turned[:50]))


def _render_full_grid(points: np.ndarray, view: skeleton.View, width: int, height: int):
    """The obvious renderer: every pixel against every bone, no window."""
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    out = np.empty((len(points), height, width), np.uint8)
    for i, p in enumerate(points):
        best = np.full((height, width), np.inf)
        for a, b in skeleton.BONES:
            ab = p[b] - p[a]
            t = np.clip(((cols - p[a, 0]) * ab[0] + (rows - p[a, 1]) * ab[1])
                        / max(ab @ ab, 1e-12), 0, 1)
            best = np.minimum(best, np.hypot(cols - p[a, 0] - t * ab[0],
                                             rows - p[a, 1] - t * ab[1]))
        head = np.hypot(cols - p[skeleton.HEAD, 0], rows - p[skeleton.HEAD, 1])
        cover = np.maximum(np.clip(view.line_px / 2 + 0.5 - best, 0, 1),
                           np.clip(view.head_px + 0.5 - head, 0, 1))
        out[i] = np.rint(16 + (232 - 16) * cover)
    return out


def test_render_draws_the_same_figure_as_the_obvious_full_frame_renderer():
    joints, _ = world_joints(real_mocap("DANCE_C_2"))
    view = skeleton.choose_view(joints)
    picked = joints[::97]
    fast = skeleton.render(picked, view=view)
    points = skeleton.project(skeleton.with_virtual_joints(picked), view).astype(np.float32)
    slow = _render_full_grid(points, view, 64, 48)
    assert np.abs(fast.astype(int) - slow).max() <= 1


def test_render_is_deterministic_framed_for_the_whole_take_and_fast():
    joints, _ = world_joints(real_mocap("DANCE_C_2"))
    started = time.perf_counter()
    frames = skeleton.render(joints)
    seconds = time.perf_counter() - started
    assert frames.shape == (len(joints), 48, 64) and frames.dtype == np.uint8
    assert seconds < 5, f"{len(joints)} frames took {seconds:.1f} s"
    np.testing.assert_array_equal(frames, skeleton.render(joints))
    view = skeleton.choose_view(joints)
    points = skeleton.project(skeleton.with_virtual_joints(joints), view)
    assert points[..., 0].min() > 0 and points[..., 0].max() < 64
    assert points[..., 1].min() > 0 and points[..., 1].max() < 48
    # The dancer travels: the figure's centre crosses a good part of the frame.
    assert np.ptp(points[:, skeleton.NECK, 0]) > 20


def test_retime_interpolates_between_source_frames():
    joints = np.zeros((4, 23, 3))
    joints[:, 0, 0] = [0, 10, 20, 30]
    fast = skeleton.retime(joints, 25.0, 50.0)
    assert len(fast) == 8
    assert fast[:, 0, 0].tolist() == [0, 5, 10, 15, 20, 25, 30, 30]
    assert skeleton.retime(joints, 25.0, 25.0) is joints


# ---- importing real videos --------------------------------------------------------


@pytest.fixture(scope="module")
def aist_take(tmp_path_factory):
    out = tmp_path_factory.mktemp("video-takes")
    info = import_video(real_video("aist_clip.mp4"), out, sample_rate=SR)
    return info, out


def test_video_import_gives_an_aligned_take_of_the_clip(aist_take):
    info, out = aist_take
    assert info.path.parent == out and info.path.name.endswith("-aist_clip")
    assert info.label == "aist_clip" and info.clean and info.problems == ()
    assert (info.fps, info.width, info.height, info.sample_rate) == (30.0, 64, 48, SR)
    assert info.frames == 146                      # every frame of the 30 fps stream
    assert abs(info.duration_s - 4.9) <= 1 / 30 + 1e-9
    assert abs(info.audio_s - info.duration_s) < 1 / info.fps
    assert info.audio_samples == round(info.frames * SR / info.fps)
    assert info.audio_source == "import:video aist_clip.mp4"
    assert info.extra["source"] == "aist_clip.mp4" and info.extra["source_fps"] == 30.0
    assert info.extra["source_size"] == [1920, 1080] and info.extra["audio_codec"] == "aac"
    take = read_session(info.path)
    assert take.frames.shape == (146, 48, 64)
    np.testing.assert_allclose(take.timestamps, np.arange(146) / 30.0)
    assert np.sqrt(np.mean(take.audio ** 2)) > 0.05    # the music, not silence
    assert motiongram(np.asarray(take.frames)).any()
    assert [p.name for p in out.iterdir()] == [info.path.name]   # no staging left


def test_video_audio_starts_with_the_first_frame(aist_take):
    """The clip's picture starts 45 ms after its sound: that lead is dropped."""
    info, _ = aist_take
    container = av.open(str(real_video("aist_clip.mp4")))
    video = container.streams.video[0]
    assert video.start_time * video.time_base == Fraction(1362, 30000)
    container.close()
    samples, _, _ = importers._decode_file_audio(real_video("aist_clip.mp4"), SR)
    lead = round(1362 / 30000 * SR)
    take = read_session(info.path)
    expected = samples[lead:lead + 2000]
    np.testing.assert_allclose(take.audio[:2000], expected, atol=1.5 / 32767)


def test_a_long_video_imports_in_a_few_seconds(tmp_path):
    started = time.perf_counter()
    info = import_video(real_video("mgt_dancer.avi"), tmp_path, sample_rate=SR)
    seconds = time.perf_counter() - started
    assert info.frames == 1572 and info.audio_samples == round(1572 * SR / 25)
    assert seconds < 15, f"63 s of video took {seconds:.1f} s"


# ---- importing real motion capture -------------------------------------------------


@pytest.mark.parametrize("take, style", [("DANCE_C_2", "cha-cha"), ("DANCE_W_1", "waltz")])
def test_mocap_import_gives_a_take_of_exactly_the_capture(take, style, tmp_path):
    folder = real_mocap(take)
    _, data = world_joints(folder)
    start = json.loads((folder / "config.json").read_text())["start_position"]
    length = data["length"]
    info = import_mocap(folder, tmp_path, sample_rate=SR)
    assert info.label == style and info.clean and info.problems == ()
    assert info.frames == length and info.fps == 25.0
    assert info.duration_s == pytest.approx(length / 25)
    assert info.audio_samples == round(length * SR / 25)
    assert info.audio_source == f"import:mocap {take}"
    assert info.extra == {"source": take, "length": length, "start_position": start,
                          "style": style, "bone_list_version": skeleton.BONE_LIST_VERSION,
                          "imported": info.extra["imported"]}
    s = read_session(info.path)
    frames = np.asarray(s.frames)
    # The figure is in every frame, and it moves in most of them.
    assert (frames > 40).any(axis=(1, 2)).all()
    moving = motiongram(frames).any(axis=1)
    assert moving.mean() > 0.8, moving.mean()
    # The sound is the song from start_position / 25 s on (the dataset's alignment).
    song, _, _ = importers._decode_file_audio(folder / "audio.mp3", SR)
    offset = round(start / 25 * SR)
    middle = slice(len(s.audio) // 2, len(s.audio) // 2 + 4000)
    expected = np.clip(song[offset:offset + len(s.audio)][middle], -1, 1)
    np.testing.assert_allclose(s.audio[middle], expected, atol=1.5 / 32767)
    assert np.sqrt(np.mean(s.audio ** 2)) > 0.02
    assert [p.name for p in tmp_path.iterdir()] == [info.path.name]


def test_mocap_label_can_be_given_and_same_second_takes_do_not_collide(tmp_path):
    folder = real_mocap("DANCE_W_1")
    first = import_mocap(folder, tmp_path, sample_rate=SR, label="Slow Waltz!")
    assert first.label == "slow_waltz"
    # A take folder of the same name already there: the import gets its own.
    clash = tmp_path / ".importing-test"
    (clash / first.path.name).mkdir(parents=True)
    moved = importers._publish(clash / first.path.name, tmp_path)
    assert moved.name == first.path.name + "-2" and first.path.is_dir()


def test_mocap_at_another_frame_rate_keeps_the_duration(tmp_path):
    info = import_mocap(real_mocap("DANCE_W_1"), tmp_path, sample_rate=SR, fps=30.0)
    assert info.frames == round(1430 * 30 / 25) and info.fps == 30.0
    assert info.audio_samples == round(info.frames * SR / 30)


def _write_clip(path: Path, *, seconds: float, sound_from: float, sound_to: float) -> None:
    """A 25 fps clip whose sound (a 0.5 tone) starts and ends inside the picture."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = 44100
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(round(seconds * 25)):
            image = np.full((48, 64, 3), (7 * i) % 256, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        t = np.arange(round((sound_to - sound_from) * rate)) / rate
        pcm = np.round(0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for at in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, at:at + 1024].copy(), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.time_base = rate, Fraction(1, rate)
            frame.pts = round(sound_from * rate) + at
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


def test_sound_that_starts_late_and_ends_early_is_placed_and_padded(tmp_path):
    clip = tmp_path / "late.mkv"
    _write_clip(clip, seconds=3.0, sound_from=0.5, sound_to=1.5)
    info = import_video(clip, tmp_path / "takes", sample_rate=SR)
    assert info.frames == 75 and info.audio_samples == 3 * SR
    audio = read_session(info.path).audio
    loud = np.flatnonzero(np.abs(audio) > 0.05)
    assert abs(loud[0] - SR // 2) <= SR // 400 and abs(loud[-1] - 3 * SR // 2) <= SR // 400
    assert np.abs(audio[loud[0]:loud[-1]]).max() == pytest.approx(0.5, abs=0.02)


# ---- refusals: one clear line, nothing left behind ----------------------------------


def _write_video_only(path: Path) -> None:
    write_video(path, (np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)), fps=25)


def test_a_video_without_sound_is_refused(tmp_path):
    video = tmp_path / "silent.mp4"
    _write_video_only(video)
    out = tmp_path / "takes"
    with pytest.raises(ImportFailed) as exc:
        import_video(video, out, sample_rate=SR)
    one_line(exc, str(video), "no audio track")
    assert_untouched(out)


def test_a_cut_off_mp4_is_refused(tmp_path):
    whole = real_video("aist_clip.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[:len(whole) * 4 // 10])     # its index (moov) is at the end
    out = tmp_path / "takes"
    with pytest.raises(ImportFailed) as exc:
        import_video(cut, out, sample_rate=SR)
    one_line(exc, str(cut), "cannot open as a video", "cut off")
    assert_untouched(out)


def test_a_file_that_stops_early_is_refused_not_imported_in_part(tmp_path):
    """Matroska states its length up front, so a cut copy opens and decodes, then stops."""
    remuxed = tmp_path / "clip.mkv"
    with av.open(str(real_video("aist_clip.mp4"))) as src, av.open(str(remuxed), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = remuxed.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) * 6 // 10])
    out = tmp_path / "takes"
    with pytest.raises(ImportFailed) as exc:
        import_video(cut, out, sample_rate=SR)
    one_line(exc, str(cut), "looks truncated", "4.9 s")
    assert_untouched(out)
    # The whole remux imports: the refusal is about the cut, not the container.
    # (Matroska keeps milliseconds, so the frame rate reads 30.3 and a frame or two more.)
    assert import_video(remuxed, out, sample_rate=SR).duration_s == pytest.approx(146 / 30,
                                                                                 abs=0.1)


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.mp4", "no such file"),
    (lambda d: d, "not a file"),
    (lambda d: (d / "notes.mp4").write_text("not a video at all\n") and d / "notes.mp4",
     "cannot open as a video"),
])
def test_things_that_are_not_videos_are_refused_in_one_line(tmp_path, make, expected):
    source = make(tmp_path)
    out = tmp_path / "takes"
    with pytest.raises(ImportFailed) as exc:
        import_video(source, out, sample_rate=SR)
    one_line(exc, str(source), expected)
    assert_untouched(out)


def test_audio_only_files_are_refused(tmp_path):
    song = real_mocap("DANCE_W_1") / "audio.mp3"
    with pytest.raises(ImportFailed) as exc:
        import_video(song, tmp_path / "takes", sample_rate=SR)
    one_line(exc, str(song), "cover art")


def _mocap_copy(tmp_path: Path, config: dict, name: str = "DANCE_W_1") -> Path:
    real = real_mocap("DANCE_W_1")
    folder = tmp_path / name
    folder.mkdir()
    for member in ("audio.mp3", "skeletons.json"):
        os.symlink(real / member, folder / member)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_mocap_whose_song_ends_before_the_dance_is_refused(tmp_path):
    folder = _mocap_copy(tmp_path, {"start_position": 5000, "end_position": 6439})
    out = tmp_path / "takes"
    with pytest.raises(ImportFailed) as exc:
        import_mocap(folder, out, sample_rate=SR)
    one_line(exc, "audio.mp3", "song ends")
    assert_untouched(out)


@pytest.mark.parametrize("setup, expected", [
    (lambda d: d / "nothing", "no such folder"),
    (lambda d: (d / "DANCE_C_1").mkdir() or d / "DANCE_C_1", "missing audio.mp3"),
])
def test_folders_that_are_not_mocap_are_refused(tmp_path, setup, expected):
    folder = setup(tmp_path)
    with pytest.raises(ImportFailed) as exc:
        import_mocap(folder, tmp_path / "takes", sample_rate=SR)
    one_line(exc, str(folder), expected)


def test_mocap_with_a_bad_config_is_refused(tmp_path):
    folder = _mocap_copy(tmp_path, {"start_position": -3})
    with pytest.raises(ImportFailed) as exc:
        import_mocap(folder, tmp_path / "takes", sample_rate=SR)
    one_line(exc, "config.json", "start_position")


def test_a_failure_after_frames_are_written_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk pulled out")

    monkeypatch.setattr(importers, "_audio_window", broken)
    out = tmp_path / "takes"
    with pytest.raises(RuntimeError):
        import_mocap(real_mocap("DANCE_W_1"), out, sample_rate=SR)
    assert_untouched(out)


# ---- the command line -----------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m train_host")
    importers.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_imports_what_it_can_and_reports_each_failure_on_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("no video here")
    out = tmp_path / "takes"
    code = _cli(["import-video", str(real_video("aist_clip.mp4")), str(bad), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 1
    lines = printed.out.splitlines()
    assert len(lines) == 1 and "aist_clip" in lines[0] and "146 frames" in lines[0]
    assert lines[0].startswith(str(out))
    errors = printed.err.splitlines()
    assert errors == [e for e in errors if e.startswith("dancesampler: error: ")]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert len(list(out.iterdir())) == 1


def test_cli_imports_mocap_with_a_label_and_the_configs_sample_rate(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("data: {fps: 25, sample_rate: 16000}\n")
    out = tmp_path / "takes"
    code = _cli(["import-mocap", str(real_mocap("DANCE_W_1")), "--out", str(out),
                 "--label", "waltz-one", "--config", str(config)])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert "waltz-one" in line and "1430 frames" in line and "57.20 s" in line
    take = read_session(next(out.iterdir()))
    assert take.info.sample_rate == 16000 and take.info.audio_samples == 1430 * 16000 // 25
