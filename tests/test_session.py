"""Recorded takes: written, cut off, filled up, listed, read back and deleted."""

import errno
import hashlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import wave
from collections import namedtuple
from datetime import datetime, timezone

import numpy as np
import pytest

from device.audio import to_int16
from device.session import (AUDIO_FILE, FRAMES_FILE, INFO_FILE, TIMES_FILE, SessionError,
                            SessionWriter, delete_session, last_session, list_sessions,
                            read_session, sanitize_label, session_info, sessions_command)
from tests.conftest import ROOT

FPS, RATE, HOP = 30, 22050, 735
START = datetime(2026, 11, 21, 14, 30, 0, tzinfo=timezone.utc)


def _frame(i):
    """A frame that differs from every other one, so a misplaced frame shows."""
    y, x = np.mgrid[0:48, 0:64]
    return ((x * 3 + y * 5 + i * 7) % 256).astype(np.uint8)


def _hop(i):
    t = (np.arange(HOP) + i * HOP) / RATE
    return (0.5 * np.sin(2 * np.pi * 220 * t) + 0.001 * i).astype(np.float32)


def _writer(root, **kwargs):
    kwargs = {"label": "salsa", "fps": FPS, "sample_rate": RATE, "audio_source": "alsa:hw:1",
              "started": START, "min_free_bytes": 0, **kwargs}
    return SessionWriter(root, **kwargs)


def _record(writer, n_frames, first=0):
    for i in range(first, first + n_frames):
        assert writer.add_frame(_frame(i), i / FPS)
        assert writer.add_audio(_hop(i))


def _digest(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def test_a_take_reads_back_exactly(tmp_path):
    writer = _writer(tmp_path, extra={"source": "test"})
    _record(writer, 45)
    info = writer.close()
    assert writer.path == tmp_path / "20261121T143000Z-salsa"
    assert sorted(p.name for p in writer.path.iterdir()) == sorted(
        [INFO_FILE, FRAMES_FILE, TIMES_FILE, AUDIO_FILE])
    assert info.clean and info.problems == ()
    assert (info.label, info.fps, info.width, info.height) == ("salsa", 30.0, 64, 48)
    assert info.sample_rate == RATE
    assert info.audio_source == "alsa:hw:1" and info.started == "2026-11-21T14:30:00.000Z"
    assert info.extra == {"source": "test"}
    assert (info.frames, info.audio_samples) == (45, 45 * HOP)
    assert info.duration_s == pytest.approx(1.5) and info.audio_s == pytest.approx(1.5)

    take = read_session(writer.path)
    assert take.info == info
    assert take.frames.shape == (45, 48, 64) and take.frames.dtype == np.uint8
    assert all(np.array_equal(take.frames[i], _frame(i)) for i in range(45))
    assert np.array_equal(take.timestamps, np.arange(45) / FPS)
    expected = np.concatenate([_hop(i) for i in range(45)])
    assert take.audio.dtype == np.float32
    assert np.array_equal(to_int16(take.audio), to_int16(expected))   # every sample
    with wave.open(str(writer.path / AUDIO_FILE)) as w:   # an ordinary WAV for any tool
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        assert w.getnframes() == 45 * HOP
    assert writer.close() == info                         # idempotent
    assert not writer.add_frame(_frame(0), 2.0) and not writer.add_audio(_hop(0))


def test_a_killed_writer_leaves_a_readable_take(tmp_path):
    # A real SIGKILL in another process: no close, no atexit, no finally.
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from datetime import datetime, timezone
        from tests.test_session import _frame, _hop, FPS
        from device.session import SessionWriter
        w = SessionWriter({str(tmp_path)!r}, label="crash", fps=FPS, sample_rate=22050,
                          audio_source="track:song.wav", flush_every_s=0.5, min_free_bytes=0,
                          started=datetime(2026, 11, 21, 14, 30, tzinfo=timezone.utc))
        for i in range(90):
            w.add_frame(_frame(i), i / FPS)
            w.add_audio(_hop(i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    folder = tmp_path / "20261121T143000Z-crash"
    before = _digest(folder)

    take = read_session(folder)
    info = take.info
    assert not info.clean
    assert "not cleanly stopped" in info.problems
    assert info.frames >= 2 * FPS and info.audio_samples >= 2 * RATE
    assert len(take.frames) == len(take.timestamps) == info.frames
    assert np.array_equal(take.timestamps, np.arange(info.frames) / FPS)
    assert all(np.array_equal(take.frames[i], _frame(i)) for i in range(info.frames))
    expected = np.concatenate([_hop(i) for i in range(90)])[:info.audio_samples]
    assert np.array_equal(to_int16(take.audio), to_int16(expected))
    # The header was patched while recording (it names the flushed audio), so the
    # WAV as left on the card is valid for any tool.
    with wave.open(str(folder / AUDIO_FILE)) as w:
        assert 2 * RATE <= w.getnframes() <= info.audio_samples
        assert len(w.readframes(w.getnframes())) == 2 * w.getnframes()
    assert _digest(folder) == before                       # reading changed nothing


def test_flushing_patches_the_header_as_it_goes(tmp_path):
    writer = _writer(tmp_path, flush_every_s=1.0)
    _record(writer, 40)                                    # 1.33 s: one flush, at 1.0 s
    with wave.open(str(writer.path / AUDIO_FILE)) as w:
        assert w.getnframes() == 30 * HOP
    info = session_info(writer.path)
    assert "audio header stale (it says 22050 samples, the file holds 29400)" in info.problems
    assert not info.clean and info.frames == 40
    writer.close()


def test_camera_and_audio_threads_can_share_a_writer(tmp_path):
    writer = _writer(tmp_path, flush_every_s=0.1)
    camera = threading.Thread(target=lambda: [writer.add_frame(_frame(i), i / FPS) for i in range(60)])
    capture = threading.Thread(target=lambda: [writer.add_audio(_hop(i)) for i in range(60)])
    for thread in (camera, capture):
        thread.start()
    for thread in (camera, capture):
        thread.join(timeout=10)
    take = read_session(writer.close().path)
    assert take.info.problems == () and take.info.frames == 60
    assert all(np.array_equal(take.frames[i], _frame(i)) for i in range(60))
    expected = np.concatenate([_hop(i) for i in range(60)])
    assert np.array_equal(to_int16(take.audio), to_int16(expected))


def test_takes_never_overwrite_each_other(tmp_path):
    writers = [_writer(tmp_path) for _ in range(3)]
    names = [w.path.name for w in writers]
    base = "20261121T143000Z-salsa"
    assert names == [base, f"{base}-2", f"{base}-3"]
    for n, writer in enumerate(writers):
        _record(writer, n + 1)
    infos = [w.close() for w in writers]
    assert [info.frames for info in infos] == [1, 2, 3]
    assert [info.path.name for info in list_sessions(tmp_path)] == names


def test_a_full_disk_stops_the_take_cleanly(tmp_path, monkeypatch):
    writer = _writer(tmp_path, min_free_bytes=10_000_000, flush_every_s=0.5)
    _record(writer, 20)                                    # flushed once, at 0.5 s
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    results = [(writer.add_frame(_frame(i), i / FPS), writer.add_audio(_hop(i)))
               for i in range(20, 40)]
    # The frame and hop that reach the next flush are the last ones kept.
    assert results[:10] == [(True, True)] * 9 + [(True, False)]
    assert all(r == (False, False) for r in results[10:])
    assert writer.stopped_reason == "disk full" and not writer.recording

    info = writer.close()
    assert info.clean and "stopped: disk full" in info.problems
    take = read_session(writer.path)
    assert take.info.frames == 30 and take.info.audio_samples == 30 * HOP
    assert all(np.array_equal(take.frames[i], _frame(i)) for i in range(30))


def test_a_write_that_hits_enospc_stops_cleanly(tmp_path):
    writer = _writer(tmp_path)
    _record(writer, 5)

    class Full:
        """frames.t on a card that has just filled up: the frame went in, its time did not."""

        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

    writer._times = writer._files[1] = Full(writer._times)
    assert writer.add_frame(_frame(5), 5 / FPS) is False   # no exception: the show goes on
    assert writer.add_audio(_hop(5)) is False
    assert writer.stopped_reason == "disk full"
    info = writer.close()
    assert info.clean and info.frames == 5 and "stopped: disk full" in info.problems
    assert "last frame incomplete" not in info.problems    # the orphan frame was cut off
    assert (writer.path / FRAMES_FILE).stat().st_size == 5 * 64 * 48


def test_no_take_starts_without_room(tmp_path):
    with pytest.raises(SessionError, match="MB free, a take needs at least"):
        _writer(tmp_path / "sessions", min_free_bytes=10**18)
    assert list((tmp_path / "sessions").iterdir()) == []


def test_a_torn_tail_is_tolerated_and_reported(tmp_path):
    writer = _writer(tmp_path)
    _record(writer, 5)
    writer.close()
    with open(writer.path / FRAMES_FILE, "ab") as f:
        f.write(_frame(5).tobytes()[:1000])                # power cut mid-frame
    with open(writer.path / AUDIO_FILE, "ab") as f:
        f.write(to_int16(_hop(5)).tobytes() + b"\x01")     # audio past the header, one odd byte
    before = _digest(writer.path)
    take = read_session(writer.path)
    assert take.info.frames == 5 and len(take.frames) == 5
    assert take.info.audio_samples == 6 * HOP              # the file size wins over the header
    assert "last frame incomplete" in take.info.problems
    assert "last audio sample incomplete" in take.info.problems
    assert any(p.startswith("audio header stale") for p in take.info.problems)
    expected = np.concatenate([_hop(i) for i in range(6)])
    assert np.array_equal(to_int16(take.audio), to_int16(expected))
    assert _digest(writer.path) == before                  # nothing repaired in place


def test_timestamps_out_of_order_are_reported(tmp_path):
    writer = _writer(tmp_path)
    for i, t in enumerate([0.0, 0.033, 0.02, 0.1]):
        writer.add_frame(_frame(i), t)
    writer.add_audio(np.zeros(HOP * 4, np.float32))
    writer.close()
    assert "timestamps not increasing" in read_session(writer.path).info.problems


@pytest.mark.parametrize("label, expected", [
    ("Salsa Solo #1", "salsa_solo_1"),
    ("  Café--Crème  ", "cafe--creme"),
    ("../../etc/passwd", "etc_passwd"),
    ("", "take"),
    ("!!!", "take"),
    (None, "take"),
    ("x" * 60, "x" * 40),
])
def test_labels_are_sanitised(label, expected):
    assert sanitize_label(label) == expected


def test_the_folder_uses_the_sanitised_label(tmp_path):
    writer = _writer(tmp_path, label="Hip Hop/2")
    assert writer.path.name == "20261121T143000Z-hip_hop_2"
    assert writer.close().label == "hip_hop_2"


def test_delete_removes_a_take_and_refuses_anything_else(tmp_path):
    writer = _writer(tmp_path)
    _record(writer, 3)
    writer.close()
    delete_session(writer.path)
    assert not writer.path.exists() and list(tmp_path.iterdir()) == []

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(SessionError, match="not a take folder"):
        delete_session(notes)
    intruded = _writer(tmp_path)
    intruded.close()
    (intruded.path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(SessionError, match=r"not part of a take \(photo.jpg\)"):
        delete_session(intruded.path)
    assert (notes / "todo.txt").read_text() == "keep me" and (intruded.path / INFO_FILE).exists()


def test_listing_orders_takes_and_shows_broken_ones(tmp_path):
    late = _writer(tmp_path, label="late", started=START.replace(minute=45))
    _record(late, 3)
    late.close()
    early = _writer(tmp_path, label="early")
    _record(early, 3)
    early.abort()
    (tmp_path / "not-a-take").mkdir()
    (tmp_path / ".importing-x").mkdir()                    # an importer's staging folder
    (tmp_path / ".importing-x" / INFO_FILE).write_text("format: dancesampler-session\n")
    broken = tmp_path / "20261121T150000Z-broken"
    broken.mkdir()
    (broken / INFO_FILE).write_text("format: [unclosed\n")

    infos = list_sessions(tmp_path)
    assert [i.label for i in infos] == ["early", "late", "broken"]
    assert "not cleanly stopped" in infos[0].problems
    assert infos[2].problems[0].startswith("unreadable: session.yaml is not valid YAML")
    assert last_session(tmp_path) == broken
    with pytest.raises(SessionError, match="session.yaml is not valid YAML"):
        read_session(broken)
    assert last_session(tmp_path / "nowhere") is None


@pytest.mark.parametrize("text, message", [
    ("format: something-else\n", "not a dancesampler take"),
    ("format: dancesampler-session\nformat_version: 2\n", "format version 2 is not supported"),
    ("format: dancesampler-session\nformat_version: 1\nlabel: x\nfps: -3\n",
     "fps must be a positive number.*clean is missing"),
])
def test_unusable_takes_are_refused_in_one_line(tmp_path, text, message):
    writer = _writer(tmp_path)
    writer.close()
    (writer.path / INFO_FILE).write_text(text)
    with pytest.raises(SessionError, match=message) as caught:
        read_session(writer.path)
    assert "\n" not in str(caught.value) and str(writer.path) in str(caught.value)


def test_a_missing_file_is_refused(tmp_path):
    writer = _writer(tmp_path)
    writer.close()
    (writer.path / TIMES_FILE).unlink()
    with pytest.raises(SessionError, match="frames.t is missing"):
        read_session(writer.path)


def test_sessions_command_prints_json_and_a_table(tmp_path):
    good = _writer(tmp_path, label="good")
    _record(good, 30)
    good.close()
    cut = _writer(tmp_path, label="cut", started=START.replace(second=5))
    _record(cut, 15)
    cut.abort()

    out = io.StringIO()
    assert sessions_command(tmp_path, as_json=True, out=out) == 0
    listed = json.loads(out.getvalue())
    assert [entry["label"] for entry in listed] == ["good", "cut"]
    for entry in listed:
        assert {"path", "label", "started", "duration_s", "frames", "audio_s", "clean",
                "problems"} <= set(entry)
    assert listed[0]["path"] == str(good.path)
    assert {k: listed[0][k] for k in ("duration_s", "frames", "audio_s", "clean", "problems")} == {
        "duration_s": 1.0, "frames": 30, "audio_s": 1.0, "clean": True, "problems": []}
    assert listed[1]["clean"] is False and listed[1]["problems"] == ["not cleanly stopped"]

    out = io.StringIO()
    sessions_command(tmp_path, as_json=False, out=out)
    table = out.getvalue().splitlines()
    assert table[0].split()[:4] == ["started", "(UTC)", "label", "length"]
    assert "2026-11-21 14:30:05" in table[2] and " NO " in table[2]
    assert "not cleanly stopped" in table[2]
    assert "1 not cleanly stopped" in table[-1]

    out = io.StringIO()
    sessions_command(tmp_path / "empty", as_json=False, out=out)
    assert out.getvalue().startswith("no takes in")


def _take(tmp_path):
    writer = _writer(tmp_path)
    _record(writer, 10)
    return writer.close().path


@pytest.mark.parametrize("damage, says", [
    ("fps: 1.0e-9", "fps must be from 1 to 240"),
    ("sample_rate: 999999999", "sample_rate must be from 8000 to 192000"),
    ("width: 100000", "width must be from 8 to 4096"),
    ("extra: &a [[*b]]\nbomb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]", "aliases are not allowed"),
    ("extra: " + "[" * 5000, "not valid YAML"),
])
def test_a_take_from_elsewhere_that_would_exhaust_the_host_is_refused(tmp_path, damage, says):
    """Takes pulled or copied from elsewhere: values that would make a reader ask for
    absurd memory, and YAML alias bombs, are refused in one line naming the take."""
    path = _take(tmp_path)
    info = path / INFO_FILE
    key = damage.split(":")[0]
    lines = [line for line in info.read_text().splitlines() if not line.startswith(key + ":")]
    info.write_text("\n".join(lines + [damage]) + "\n")
    with pytest.raises(SessionError, match=says) as refused:
        session_info(path)
    assert str(refused.value).startswith(str(path)) and "\n" not in str(refused.value)
    out = io.StringIO()
    assert sessions_command(tmp_path, as_json=True, out=out) == 0
    assert len(out.getvalue()) < 10_000      # listed as broken, not expanded


def test_a_fifo_as_session_yaml_does_not_hang_the_listing(tmp_path):
    import os

    path = _take(tmp_path)
    (path / INFO_FILE).unlink()
    os.mkfifo(path / INFO_FILE)
    with pytest.raises(SessionError, match="not a regular file"):
        session_info(path)
    out = io.StringIO()
    sessions_command(tmp_path, as_json=False, out=out)
    assert "not a regular file" in out.getvalue()


def test_headless_take_folders_are_removed_once_old_and_nothing_else(tmp_path):
    """A take cut off before its session.yaml was written: removed once it has not
    changed for a minute; a fresh one, a real take and other folders stay."""
    import os
    import time

    from device.session import is_headless, remove_headless

    old = tmp_path / "20261121T143000Z-salsa"
    old.mkdir()
    (old / FRAMES_FILE).write_bytes(b"\0" * 100)
    fresh = tmp_path / "20261121T143500Z-salsa"
    fresh.mkdir()
    stranger = tmp_path / "20261121T144000Z-notes"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    real = _take(tmp_path)
    long_ago = time.time() - 120
    for path in (old, old / FRAMES_FILE, stranger, stranger / "notes.txt"):
        os.utime(path, (long_ago, long_ago))
    assert is_headless(old) and not is_headless(real)
    assert remove_headless(tmp_path) == [old]
    assert not old.exists() and fresh.exists() and real.exists()
    assert (stranger / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", [FRAMES_FILE, TIMES_FILE, AUDIO_FILE])
def test_a_fifo_among_a_takes_files_is_refused_without_blocking(tmp_path, name):
    import os

    path = _take(tmp_path)
    (path / name).unlink()
    os.mkfifo(path / name)
    with pytest.raises(SessionError, match=f"{name} is not a regular file"):
        read_session(path)
    out = io.StringIO()
    sessions_command(tmp_path, as_json=False, out=out)
    assert f"{name} is not a regular file" in out.getvalue()
