"""Recording takes: alignment of frames and sound, the record command, the button's
recorder, and what a stalled writer, a full card or SIGKILL leave behind.

The alignment tests film a still scene with one bright flash and record a sound
with one click at the same moment, through each audio source, and check that the
take puts the flash's frame within one frame period of the click:

- ``wav:``   a lossless video and a WAV file, through the record command;
- ``alsa:``  the same video paced on the clock, with the click captured through
             the real libasound path (an ALSA ``file`` PCM whose ``infile`` stands
             in for the line input);
- ``track:`` the box plays the click track through an ALSA ``file`` PCM, and a
             "dancer" flashes as soon as the click has reached that device.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import wave

import numpy as np
import pytest
import yaml

from device.camera import Frame
from device.config import load_device_config, with_overrides
from device.errors import AudioError
from device.motiongram import MotiongramParams, motion_amount, motiongram
from device.__main__ import main as device_main
from device.recorder import TakeRecorder, record_from
from device.session import INFO_FILE, SessionWriter, list_sessions, read_session
from tests.conftest import ROOT

FPS = 30
SR = 22050
HOP = SR // FPS
FLASH_FRAME = 45                 # the white square shows in frames 45 and 46
T0 = FLASH_FRAME / FPS           # 1.5 s
CLICK_AT = round(T0 * SR)        # sample 33075
SQUARE = (slice(16, 32), slice(24, 40))


# ---- the scene and the sound --------------------------------------------------------

def _backdrop() -> np.ndarray:
    """A still, textured scene (a flat one would hide a frame-shift bug in the reader)."""
    y, x = np.mgrid[0:48, 0:64]
    return (40 + (x * 2 + y) % 50).astype(np.uint8)


def _scene(flash: bool) -> np.ndarray:
    image = _backdrop()
    if flash:
        image[SQUARE] = 255
    return image


def _click_track(seconds: float, click_at: int = CLICK_AT) -> np.ndarray:
    """Silence with one 5 ms click, whose first sample is already loud."""
    audio = np.zeros(round(seconds * SR), np.float32)
    n = round(0.005 * SR)
    audio[click_at:click_at + n] = 0.8 * np.cos(2 * np.pi * 1000 * np.arange(n) / SR)
    return audio


def _write_wav(path, samples, rate=SR):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(np.rint(samples * 32767), -32768, 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """flash.mkv (3 s, 30 fps, lossless ffv1) and click.wav (3.5 s, click at 1.5 s)."""
    av = pytest.importorskip("av")
    folder = tmp_path_factory.mktemp("media")
    video = folder / "flash.mkv"
    container = av.open(str(video), "w")
    stream = container.add_stream("ffv1", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
    for i in range(3 * FPS):
        frame = av.VideoFrame.from_ndarray(_scene(i in (FLASH_FRAME, FLASH_FRAME + 1)),
                                           format="gray")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    click = _click_track(3.5)
    return {"video": video, "click": click, "wav": _write_wav(folder / "click.wav", click),
            "folder": folder}


def _flash_time(session) -> float:
    """Timestamp of the frame where the flash begins: the first big motion."""
    params = MotiongramParams()
    motion = motion_amount(motiongram(np.asarray(session.frames), params), params)
    assert motion.max() > 0.02, "no flash in the recorded frames"
    onset = int(np.argmax(motion > 0.5 * motion.max()))
    return float(session.timestamps[onset])


def _click_time(session) -> float:
    loud = np.flatnonzero(np.abs(session.audio) > 0.3)
    assert len(loud), "no click in the recorded audio"
    return loud[0] / session.info.sample_rate


@pytest.fixture
def alsa_devices(tmp_path, monkeypatch):
    """ALSA PCMs over null, through the real libasound: 'cap' captures from in.raw
    (the file plugin's infile), 'play' writes what it plays to out.raw."""
    pytest.importorskip("alsaaudio")
    raw_in, raw_out = tmp_path / "in.raw", tmp_path / "out.raw"
    raw_in.write_bytes(b"")
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f'pcm.cap {{\n type file\n slave.pcm {{ type null }}\n file "/dev/null"\n'
        f' infile "{raw_in}"\n format "raw"\n}}\n'
        f'pcm.play {{\n type file\n slave.pcm {{ type null }}\n file "{raw_out}"\n'
        f' format "raw"\n}}\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    return {"in": raw_in, "out": raw_out}


def record(*argv, config=None) -> int:
    """``python -m device record ARGV``, in this process."""
    return device_main([*(["--config", str(config)] if config else []), "record", *argv])


def _frame(i: int, flash: bool = False) -> Frame:
    return Frame(_scene(flash), i / FPS)


# ---- alignment ---------------------------------------------------------------------

def test_wav_take_puts_the_flash_on_the_click(media, tmp_path, capfd):
    """The record command, wav mode: frame i at i/fps, the file's samples as they are."""
    out = tmp_path / "takes"
    rc = record("--camera", f"video:{media['video']}", "--audio-in", f"wav:{media['wav']}",
                "--label", "Flash Test", "--out", str(out), "--seconds", "2")
    assert rc == 0
    [info] = list_sessions(out)
    session = read_session(info.path)
    assert session.info.clean and session.info.problems == ()
    assert session.info.label == "flash_test"
    assert session.info.frames == 2 * FPS                       # --seconds honoured
    np.testing.assert_allclose(session.timestamps, np.arange(2 * FPS) / FPS)
    assert session.info.audio_samples == 2 * FPS * HOP          # one hop per frame
    np.testing.assert_allclose(session.audio, media["click"][:2 * FPS * HOP], atol=1 / 32767)
    error = _flash_time(session) - _click_time(session)
    assert abs(error) < 1 / FPS
    assert error == pytest.approx(0.0, abs=1e-9)                # aligned by construction
    printed = capfd.readouterr().out
    assert str(info.path) in printed and "label:    flash_test" in printed
    assert "2.00 s (60 frames, 0 dropped)" in printed and "audio:    2.00 s" in printed


class _WorldCamera:
    """The video, shown in real time from ``origin()``: frame k at origin + k/fps.

    The capture stand-in's own start is the world's time 0, as a real line input
    and a real camera share the room's time.
    """

    def __init__(self, path, origin, late_frame=None, late_s=0.0):
        from device.camera.video import VideoFileCamera

        self._video = VideoFileCamera(path, fps=FPS)
        self._origin = origin
        self._late_frame, self._late_s = late_frame, late_s
        self.fps, self.paced, self.name = FPS, True, "world camera"

    def read(self):
        frame = self._video.read()
        if frame is None:
            return None
        origin = self._origin()
        while origin is None:
            time.sleep(0.001)
            origin = self._origin()
        delay = origin + frame.timestamp - time.monotonic()
        if round(frame.timestamp * FPS) == self._late_frame:
            delay += self._late_s      # delivered late: a busy thread, a slow pipeline
        if delay > 0:
            time.sleep(delay)
        return frame

    def close(self):
        self._video.close()


@pytest.mark.parametrize("late_s", [0.0, 0.06], ids=["on-time", "flash-read-60ms-late"])
def test_alsa_capture_take_puts_the_flash_on_the_click(media, alsa_devices, tmp_path, late_s):
    """Capture mode: the click comes in through libasound (file plugin infile).

    A frame read late keeps the time the camera gave it: the flash frame is
    delivered 60 ms late in the second run and must still land on the click."""
    click = media["click"]
    alsa_devices["in"].write_bytes(np.rint(click * 32767).astype("<i2").tobytes())
    recorder = TakeRecorder(tmp_path / "takes", audio_in="alsa:cap", fps=FPS, sample_rate=SR,
                            period_size=128, capture_periods=16)
    assert recorder.start(wait=True)
    capture = recorder.capture
    assert capture.pace                       # no sound card behind it: paced, with a warning
    camera = _WorldCamera(media["video"], lambda: capture.paced_origin,
                          late_frame=FLASH_FRAME, late_s=late_s)
    try:
        info = record_from(camera, recorder, stop=threading.Event())
    finally:
        camera.close()
    session = read_session(info.path)
    assert session.info.clean and session.info.audio_source == "alsa:cap"
    assert session.info.frames == 3 * FPS
    # Every sample of the input arrived, in order, none lost or padded, until the
    # take stopped with the video's last frame.
    n = len(session.audio)
    assert session.timestamps[-1] < n / SR <= len(click) / SR
    np.testing.assert_allclose(session.audio, click[:n], atol=1 / 32767)
    # The capture's start estimate is the stand-in's own start (a period is 5.8 ms).
    assert abs(capture.start_time - capture.paced_origin) < 0.002
    assert np.all(np.diff(session.timestamps) > 0)
    error = _flash_time(session) - _click_time(session)
    print(f"alsa capture (flash read {late_s * 1000:.0f} ms late): "
          f"flash - click = {error * 1000:+.2f} ms")
    assert abs(error) < 1 / FPS
    assert abs(error) < 0.003          # and neither the read delay nor a period is in it
    extra = yaml.safe_load((info.path / INFO_FILE).read_text())["extra"]["recorder"]
    assert extra["capture_overruns"] == 0 and extra["dropped_frames"] == 0


class _ListeningDancer:
    """A camera at 30 fps whose dancer flashes as soon as the click has reached the
    sound device: a watcher thread reads the ALSA file PCM's output as it is written."""

    def __init__(self, raw_out):
        self.fps, self.paced, self.name = FPS, True, "listening dancer"
        self._raw = raw_out
        self._start = None
        self._index = 0
        self.landed_at = None       # when the click's first sample reached the device
        self.landed_sample = None   # its index in everything the device was given
        self.flash_read_at = None
        self._flash_frames = 0
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self):
        while not self._raw.exists() and not self._stop.is_set():
            time.sleep(0.001)
        with open(self._raw, "rb") as f:
            data, offset = b"", 0
            while not self._stop.is_set() and self.landed_at is None:
                data += f.read()
                whole = len(data) // 2 * 2
                if whole:
                    loud = np.flatnonzero(np.abs(np.frombuffer(data[:whole], "<i2"))
                                          > 0.3 * 32767)
                    if len(loud):
                        self.landed_at = time.monotonic()
                        self.landed_sample = offset + int(loud[0])
                    offset += whole // 2
                    data = data[whole:]
                time.sleep(0.001)

    def read(self):
        now = time.monotonic()
        if self._start is None:
            self._start = now
        deadline = self._start + self._index / FPS
        if deadline > now:
            time.sleep(deadline - now)
        flash = False
        if self.landed_at is not None and self._flash_frames < 2:
            flash = True
            self._flash_frames += 1
        image = _scene(flash)
        frame = Frame(image, self._index / FPS)
        self._index += 1
        if flash and self.flash_read_at is None:
            self.flash_read_at = time.monotonic()
        return frame

    def close(self):
        self._stop.set()


def test_track_take_is_aligned_by_the_playback_clock(alsa_devices, tmp_path):
    """Track mode: the box plays the track through ALSA (a paced file device) and the
    frames are stamped with the track position heard when they arrive."""
    from device.audio.alsa import AlsaSink
    from device.audio.stream import AudioStream

    track = _click_track(2.5)
    path = _write_wav(tmp_path / "track.wav", track)
    sink = AlsaSink("play", sample_rate=SR, period_size=128, periods=2)
    stream = AudioStream(sink, hop_samples=HOP, capacity_hops=8, prefill_hops=1,
                         margin_ms=3.0, volume=0.8, pace=True)
    recorder = TakeRecorder(tmp_path / "takes", audio_in=f"track:{path}", fps=FPS,
                            sample_rate=SR, ring_samples=8 * HOP, stream=lambda: stream)
    dancer = _ListeningDancer(alsa_devices["out"])
    assert recorder.start(wait=True)
    try:
        info = record_from(dancer, recorder, stop=threading.Event(), stream=stream)
    finally:
        dancer.close()
        stream.stop()
    assert recorder.stopped_reason == "track ended"       # the take ended with the track
    session = read_session(info.path)
    assert session.info.clean and session.info.problems == ()
    assert session.info.audio_source == f"track:{path}"
    np.testing.assert_allclose(session.audio, track, atol=1 / 32767)   # the whole track
    ts = session.timestamps
    # The playback position model: increasing, ~1/fps apart, starting as the track does.
    assert np.all(np.diff(ts) > 0)
    assert np.median(np.diff(ts)) == pytest.approx(1 / FPS, rel=0.05)
    assert 0 <= ts[0] < 2 / FPS                      # from the track's first sample heard
    assert ts[-1] < len(track) / SR <= ts[-1] + 2 / FPS
    # The device was given the lead of silence, then the whole track at the
    # stream's volume, gap-free (what comes after it is the generated sound's).
    lead = stream.lead_samples
    assert dancer.landed_sample - CLICK_AT == lead
    played = np.fromfile(alsa_devices["out"], "<i2").astype(np.float32) / 32767
    np.testing.assert_allclose(played[lead:lead + len(track)], 0.8 * track, atol=2 / 32767)
    assert stream.stats.late_blocks == 0
    # The dancer flashed (flash_read_at - landed_at) after the click reached the
    # device; the take must say the same, on the track's timeline.
    flash = _flash_time(session)
    reaction = dancer.flash_read_at - dancer.landed_at
    error = flash - (CLICK_AT / SR + reaction)
    print(f"track: flash at {flash:.4f} s, click at {CLICK_AT / SR:.4f} s, dancer reacted "
          f"after {reaction * 1000:.1f} ms; error {error * 1000:+.2f} ms")
    assert abs(error) < 1 / FPS
    assert abs(flash - CLICK_AT / SR) < 2 / FPS


def test_record_command_plays_a_track_and_stops_at_its_end(tmp_path, capfd):
    """Track mode through the command, into a WAV output: the take is the track."""
    track = _click_track(1.0, click_at=SR // 2)
    path = _write_wav(tmp_path / "song.wav", track)
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump({"audio": {"output": f"wav:{tmp_path / 'out.wav'}"}}))
    rc = record("--camera", "synthetic", "--audio-in", f"track:{path}",
                "--out", str(tmp_path / "takes"), config=config)
    assert rc == 0
    assert "ended:    track ended" in capfd.readouterr().out
    [info] = list_sessions(tmp_path / "takes")
    session = read_session(info.path)
    assert session.info.clean
    np.testing.assert_allclose(session.audio, track, atol=1 / 32767)
    assert np.all(np.diff(session.timestamps) > 0)
    assert session.timestamps[-1] < 1.0 < session.timestamps[-1] + 2 / FPS
    assert session.info.frames >= FPS // 2


def test_playback_without_a_stream_counts_hops_and_gives_back_the_generated_hop(tmp_path):
    """A run written straight to a file (no stream): frame k is at k hops."""
    track = _click_track(0.5, click_at=SR // 4)
    path = _write_wav(tmp_path / "t.wav", track)
    recorder = TakeRecorder(tmp_path / "takes", audio_in=f"track:{path}", fps=FPS,
                            sample_rate=SR)
    generated = np.full(HOP, 0.25, np.float32)
    assert recorder.playback(generated) is generated          # not recording
    recorder.start(wait=True)
    played = []
    for i in range(FPS):
        recorder.frame(_frame(i))
        played.append(recorder.playback(generated).copy())
    info = recorder.stop(wait=True)
    assert recorder.stopped_reason == "track ended"
    out = np.concatenate(played)
    np.testing.assert_allclose(out[:len(track)], track, atol=1 / 32767)  # 16-bit file
    assert np.all(out[len(track):] == 0.25)                   # the model's sound after it
    session = read_session(info.path)
    np.testing.assert_allclose(session.timestamps, np.arange(1, len(session.timestamps) + 1)
                               * HOP / SR)
    np.testing.assert_allclose(session.audio, track, atol=1 / 32767)


class _FakeStream:
    """Just the clock of an AudioStream, set by the test."""

    lead_samples = 300
    device_buffer_samples = 256

    def __init__(self):
        from device.audio.stream import StreamStats

        self._stats = StreamStats
        self.played = self.queued = self.dropped = self.late = 0

    @property
    def stats(self):
        return self._stats(played_samples=self.played, late_blocks=self.late,
                           dropped_hops=self.dropped, underruns=0,
                           queued_samples=self.queued, max_queued_samples=0)


def test_a_refused_block_of_track_is_handed_over_again(tmp_path):
    track = np.arange(SR, dtype=np.float32) / SR
    path = _write_wav(tmp_path / "ramp.wav", track)
    stream = _FakeStream()
    recorder = TakeRecorder(tmp_path / "takes", audio_in=f"track:{path}", fps=FPS,
                            sample_rate=SR, track_cushion_s=0.0, stream=lambda: stream)
    recorder.start(wait=True)
    silence = np.zeros(HOP, np.float32)
    first = recorder.playback(silence)
    stream.queued = stream.lead_samples + HOP
    second = recorder.playback(silence)
    stream.dropped += 1                          # the output refused `second`
    recorder.frame(_frame(2))
    third = recorder.playback(silence)
    np.testing.assert_array_equal(third, second)  # the track is delayed, never skipped
    np.testing.assert_array_equal(np.concatenate([first, third]), recorder.audio[:2 * HOP])
    # Heard = played - device buffer - (lead before track sample 0).
    stream.played = 300 + 256 + 1000
    recorder.frame(_frame(3))
    info = recorder.stop(wait=True)
    assert read_session(info.path).timestamps[-1] == pytest.approx(1000 / SR)


def test_a_track_in_any_common_format_is_mixed_to_mono_and_resampled(tmp_path, caplog):
    """A CD-rate stereo WAV and a FLAC play as tracks: decoded (PyAV), mixed to mono
    and resampled to the take's rate, with one line saying so; a file that is not
    audio is one clear line."""
    import wave

    import av

    t = np.arange(44100) / 44100
    left, right = 0.5 * np.sin(2 * np.pi * 441 * t), 0.25 * np.sin(2 * np.pi * 441 * t)
    stereo = np.round(np.stack([left, right], axis=1) * 32767).astype("<i2")
    cd = tmp_path / "cd.wav"
    with wave.open(str(cd), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(stereo.tobytes())
    flac = tmp_path / "song.flac"
    with av.open(str(flac), "w") as out:
        stream = out.add_stream("flac", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    for path in (cd, flac):
        caplog.clear()
        with caplog.at_level("INFO", logger="device.recorder"):
            recorder = TakeRecorder(tmp_path / "takes", audio_in=f"track:{path}", fps=FPS,
                                    sample_rate=SR)
        audio = recorder.audio
        assert abs(len(audio) - SR) <= 2, len(audio)
        middle = audio[2000:-2000]
        # Mixed to mono: the mean of the channels, a 441 Hz sine of amplitude 0.375.
        assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.375 / np.sqrt(2), rel=0.02)
        spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
        assert np.argmax(spectrum) * SR / len(middle) == pytest.approx(441, abs=3)
        assert f"track {path} is " in caplog.text and \
            "mixed to mono and resampled to 22050 Hz" in caplog.text
    text = tmp_path / "notes.txt"
    text.write_text("not a song")
    with pytest.raises(AudioError, match=r"notes\.txt: the track cannot be read as audio"):
        TakeRecorder(tmp_path / "takes", audio_in=f"track:{text}", fps=FPS, sample_rate=SR)


def test_capture_fills_what_an_overrun_lost_with_silence(alsa_devices):
    """Samples lost in an overrun are measured on the clock and filled in, so the
    rest of the take stays on its timeline; the start estimate does not move."""
    from device.audio.capture import AlsaCapture

    now = [100.0]
    got = []
    capture = AlsaCapture("cap", sample_rate=SR, period_size=128, periods=4,
                          on_audio=got.append, pace=False, clock=lambda: now[0])
    try:
        block = np.full(128, 0.5, np.float32)
        for i in range(1, 4):                       # three periods, each read on time
            now[0] = 100.0 + i * 128 / SR
            capture._deliver(block)
        assert capture.start_time == pytest.approx(100.0)
        capture._count_overrun("overrun")           # 1000 samples never reached us
        now[0] = 100.0 + (3 * 128 + 1000 + 128) / SR
        capture._deliver(block)
    finally:
        capture.stop()
    audio = np.concatenate(got)
    assert capture.overruns == 1 and capture.padded_samples == 1000
    assert len(audio) == 3 * 128 + 1000 + 128 == capture.samples
    assert np.all(audio[384:1384] == 0) and np.all(audio[1384:] == 0.5)
    assert capture.start_time == pytest.approx(100.0)


def test_lower_envelope_follows_the_least_delayed_reads_and_restarts_after_a_jump():
    from device.audio.capture import LowerEnvelope

    env = LowerEnvelope(1.0, reset_above=0.5)
    assert env.add(0.0, 10.03) == 10.03
    assert env.add(0.1, 10.00) == 10.00
    assert env.add(0.2, 10.02) == 10.00          # a late read does not move it
    assert env.add(1.15, 10.01) == 10.01         # the 10.00 has left the window
    assert env.add(1.2, 12.0) == 12.0            # the clock jumped: start again


# ---- the button's recorder ----------------------------------------------------------

def test_the_record_button_records_takes_during_the_performance(tmp_path, default_bundle):
    """The Recorder protocol inside a real show: start, stop and delete from the
    model thread while the sound goes on."""
    from gpiozero.pins.mock import MockFactory

    from device.performance import Performance

    cfg = with_overrides(load_device_config(), {
        "camera.source": "synthetic", "audio.output": f"wav:{tmp_path / 'out.wav'}",
        "model.bundle": str(default_bundle), "controls.pin_factory": "mock"})
    line = _write_wav(tmp_path / "line.wav", 0.1 * np.ones(30 * SR, np.float32))
    recorder = TakeRecorder.from_config(cfg, audio_in=f"wav:{line}", root=tmp_path / "takes")
    performance = Performance(cfg, recorder=recorder, pin_factory=MockFactory())
    stop = threading.Event()
    show = threading.Thread(target=lambda: performance.run(stop), daemon=True)
    show.start()

    def frames_after(n):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if performance.engine is not None and performance.engine.stats.frames >= n:
                return True
            time.sleep(0.01)
        return False

    try:
        assert frames_after(5)
        performance._events.put(("record-toggle", None))
        assert frames_after(performance.engine.stats.frames + 20) and recorder.recording
        performance._events.put(("record-toggle", None))
        assert frames_after(performance.engine.stats.frames + 5) and not recorder.recording
        info = recorder.wait()
        assert info.clean and info.frames >= 18
        performance._events.put(("delete-last", None))
        assert frames_after(performance.engine.stats.frames + 5)
        assert not info.path.exists()
        assert max(performance.engine.stats.compute_ms) < 1000   # the show never waited
    finally:
        stop.set()
        show.join(10)
    assert not show.is_alive()


def _wav_recorder(tmp_path, seconds=10.0, **kwargs):
    path = _write_wav(tmp_path / "line.wav", np.zeros(round(seconds * SR), np.float32))
    return TakeRecorder(tmp_path / "takes", audio_in=f"wav:{path}", fps=FPS, sample_rate=SR,
                        **kwargs)


def test_delete_last_removes_the_take_and_is_refused_while_recording(tmp_path):
    recorder = _wav_recorder(tmp_path)
    assert not recorder.delete_last()              # nothing recorded yet
    recorder.start(wait=True)
    for i in range(10):
        recorder.frame(_frame(i))
    first = recorder.stop(wait=True).path
    assert read_session(first).info.frames == 10

    recorder.start(wait=True)
    recorder.frame(_frame(0))
    assert not recorder.delete_last()              # refused: a take is being recorded
    assert recorder.recording and first.exists()
    second = recorder.stop(wait=True).path
    assert second != first

    assert recorder.delete_last()
    assert not second.exists()                     # really gone
    assert [i.path for i in list_sessions(tmp_path / "takes")] == [first]
    assert not recorder.delete_last()              # only the very last take, once
    assert first.exists()


def test_close_ends_the_take_and_waits_until_it_is_clean(tmp_path):
    recorder = _wav_recorder(tmp_path)
    recorder.start(wait=True)
    for i in range(5):
        recorder.frame(_frame(i))
    recorder.close()
    assert not recorder.recording
    info = read_session(recorder.take_path).info
    assert info.clean and info.frames == 5


def test_frame_never_blocks_when_the_writer_stalls(tmp_path, monkeypatch):
    release = threading.Event()
    real_add_frame = SessionWriter.add_frame

    def stalled_add_frame(self, image, timestamp):
        release.wait()                             # an SD card stuck in a write
        return real_add_frame(self, image, timestamp)

    monkeypatch.setattr(SessionWriter, "add_frame", stalled_add_frame)
    recorder = _wav_recorder(tmp_path, queue_frames=20)
    recorder.start(wait=True)
    frames = [_frame(i) for i in range(200)]
    times = []

    def camera_thread():
        for frame in frames:
            t0 = time.perf_counter()
            recorder.frame(frame)
            times.append(time.perf_counter() - t0)

    feeder = threading.Thread(target=camera_thread, daemon=True)
    feeder.start()
    feeder.join(5)
    if feeder.is_alive():
        release.set()
        pytest.fail(f"frame() blocked behind the stalled writer after {len(times)} frames")
    assert max(times) < 0.02
    # The writer holds one frame, the queue 20; the rest were dropped and counted.
    assert 200 - 21 <= recorder.dropped_frames <= 200 - 20
    release.set()
    info = recorder.stop(wait=True)
    assert info.frames == 200 - recorder.dropped_frames
    session = read_session(info.path)
    # The frames kept (the first 20, and one let in when the writer took its first)
    # keep their own times; the audio still ran one hop per frame, dropped ones too.
    np.testing.assert_allclose(session.timestamps[:20], np.arange(20) / FPS)
    kept = np.rint(session.timestamps * FPS)
    np.testing.assert_allclose(session.timestamps, kept / FPS)
    assert np.all(np.diff(kept) > 0) and kept[-1] < 200
    assert info.audio_samples == 200 * HOP
    extra = yaml.safe_load((info.path / INFO_FILE).read_text())["extra"]["recorder"]
    assert extra["dropped_frames"] == recorder.dropped_frames


def test_a_full_card_stops_the_take_cleanly_and_the_show_goes_on(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    recorder = _wav_recorder(tmp_path, min_free_bytes=1000)
    recorder.start(wait=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10, 10))
    generated = np.ones(HOP, np.float32)
    for i in range(3 * FPS):                       # the take flushes (and looks) every 1 s
        recorder.frame(_frame(i))
        assert recorder.playback(generated) is generated
        time.sleep(0.002)
    deadline = time.monotonic() + 5
    while recorder.recording and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not recorder.recording
    assert recorder.stopped_reason == "disk full"
    recorder.frame(_frame(999))                    # still harmless
    info = recorder.wait()
    monkeypatch.undo()
    session = read_session(info.path)
    assert session.info.clean and "stopped: disk full" in session.info.problems
    assert 0 < session.info.frames < 3 * FPS


def test_a_take_cut_by_sigkill_reads_back_unclean(tmp_path):
    line = _write_wav(tmp_path / "line.wav", 0.1 * np.ones(20 * SR, np.float32))
    out = tmp_path / "takes"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "device", "record", "--camera", "synthetic",
                             "--audio-in", f"wav:{line}", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("recording ")
        time.sleep(2.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    [info] = list_sessions(out)
    session = read_session(info.path)
    assert not session.info.clean and "not cleanly stopped" in session.info.problems
    assert session.info.frames >= FPS              # at least the first second
    assert session.info.audio_samples >= FPS * HOP
    assert np.all(np.diff(session.timestamps) > 0)
