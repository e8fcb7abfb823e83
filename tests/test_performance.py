"""The box's performance: buttons, model cycling, faults, systemd, stopping."""

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from device.audio.wav import WavSink, read_wav
from device.config import load_device_config, with_overrides
from device.errors import AudioError
from device.bundle import PERFORMER, read_bundle, write_bundle
from device.performance import FACTORY_BUNDLE, Performance, bundles_after
from device.service import Notifier
from tests.conftest import ROOT, write_video


def _config(tmp_path, **overrides):
    cfg = load_device_config()
    return with_overrides(cfg, {"camera.source": "synthetic",
                                "audio.output": f"wav:{tmp_path / 'out.wav'}",
                                "model.models_dir": str(tmp_path / "models"),
                                "model.bundle": str(tmp_path / "models" / "default.dsb"),
                                "controls.pin_factory": "mock", **overrides})


def _wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class _Show:
    """A performance playing in a thread, live (paced), until stopped."""

    def __init__(self, cfg, **kwargs):
        self.stop = threading.Event()
        self.performance = Performance(cfg, **kwargs)
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.result = self.performance.run(self.stop)

    def __enter__(self):
        self.thread.start()
        assert _wait_for(lambda: self.performance.engine is not None
                         and self.performance.engine.stats.frames > 5)
        return self.performance

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def models(tmp_path, default_bundle, tiny_bundle):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(default_bundle, folder / "default.dsb")
    shutil.copy(tiny_bundle, folder / "tiny.dsb")
    return folder


def test_model_button_crossfades_to_the_next_bundle(tmp_path, models):
    factory = MockFactory()
    with _Show(_config(tmp_path), pin_factory=factory) as performance:
        button = factory.pin(performance.cfg.controls.model_pin)
        button.drive_low()
        time.sleep(0.15)
        button.drive_high()
        assert _wait_for(lambda: performance.engine.bundle.manifest.name == "tiny")
    audio, _ = read_wav(tmp_path / "out.wav")
    assert len(audio) > 0 and np.abs(audio).max() <= 1.0


def _graph_making(samples, manifest):
    """A float TFLite graph with the manifest's input and level outputs whose segment
    has ``samples`` samples: a graph that disagrees with the manifest it ships with."""
    tf = pytest.importorskip("tensorflow")
    shape = (1, manifest.window_frames, manifest.motiongram.features)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def model(x):
        level = tf.reduce_mean(x, axis=[1, 2])[:, None]
        return {"shape": tf.zeros((1, samples)) + level, "level": level}

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model).convert()


def test_the_model_button_skips_every_bad_bundle_and_reaches_each_good_one(
        tmp_path, models, caplog):
    """Bad bundles around the good ones (cut short, bit-rotted, not a bundle at all,
    a graph that disagrees with its manifest): each press skips them with one line
    each, no traceback, and lands on the next good one; the show never stops."""
    good = (models / "tiny.dsb").read_bytes()
    (models / "a-cut-short.dsb").write_bytes(good[:-300])
    rotten = bytearray(good)
    rotten[len(rotten) // 2] ^= 0xFF
    (models / "b-rotten.dsb").write_bytes(bytes(rotten))
    (models / "c-text.dsb").write_text("not a bundle\n")
    # The factory's manifest without a latent (as bundles before version 6), for a
    # graph of the sound alone.
    sound_only = dataclasses.replace(read_bundle(models / "default.dsb").manifest,
                                     latent=None, format_version=3)
    write_bundle(models / "e-wrong-graph.dsb", sound_only,
                 {PERFORMER: _graph_making(100, sound_only)})
    (models / "f-folder.dsb").mkdir()
    caplog.set_level(logging.INFO, logger="device.performance")
    with _Show(_config(tmp_path), pin_factory=MockFactory()) as performance:
        performance._events.put(("next-model", None))   # default → (e-wrong-graph) → tiny
        assert _wait_for(lambda: performance.engine.bundle.manifest.name == "tiny")
        performance._events.put(("next-model", None))   # tiny → (a, b, c) → default
        assert _wait_for(lambda: performance.engine.bundle.manifest.name == "default")
        frames = performance.engine.stats.frames
        assert _wait_for(lambda: performance.engine.stats.frames > frames + 5)  # still playing
    skipped = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert sorted(r.getMessage().split()[2].split("/")[-1].rstrip(":") for r in skipped) == [
        "a-cut-short.dsb", "b-rotten.dsb", "c-text.dsb", "e-wrong-graph.dsb"]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    assert "makes 100 samples where the manifest promises 2205" in caplog.text


def test_no_other_good_bundle_keeps_the_playing_one(tmp_path, models, caplog):
    (models / "tiny.dsb").write_bytes((models / "tiny.dsb").read_bytes()[:-300])
    with _Show(_config(tmp_path), pin_factory=MockFactory()) as performance:
        performance._events.put(("next-model", None))
        assert _wait_for(lambda: "keeping default" in caplog.text)
        time.sleep(0.2)
        assert performance.engine.bundle.manifest.name == "default"
        frames = performance.engine.stats.frames
        assert _wait_for(lambda: performance.engine.stats.frames > frames + 5)  # still playing


@pytest.mark.parametrize("damage", ["cut short", "missing"])
def test_a_configured_bundle_that_cannot_play_gives_way_to_the_factory_model(
        tmp_path, models, damage, caplog, notify_socket):
    """Under systemd, at start, a configured model that is damaged or gone plays the
    release's factory model instead, and the status line says why."""
    configured = models / "flashed.dsb"
    if damage == "cut short":
        configured.write_bytes((models / "tiny.dsb").read_bytes()[:-300])
    cfg = _config(tmp_path, **{"model.bundle": str(configured)})
    with _Show(cfg, notifier=Notifier(str(notify_socket[0])),
               pin_factory=MockFactory()) as performance:
        assert performance.engine.bundle.path == FACTORY_BUNDLE
        status = performance.status_text()
    assert status.startswith("playing default (")
    assert f"configured model refused: {configured}" in status
    assert "playing the factory model" in caplog.text


def test_bundles_after_wraps_around(tmp_path):
    for name in ("a.dsb", "b.dsb", "c.dsb"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in bundles_after(tmp_path, tmp_path / "b.dsb")] == ["c.dsb", "a.dsb"]
    assert [p.name for p in bundles_after(tmp_path, tmp_path / "c.dsb")] == ["a.dsb", "b.dsb"]
    assert bundles_after(tmp_path / "empty", tmp_path / "c.dsb") == []


class _FlakySink(WavSink):
    """A sound card that disappears after a few writes (unplugged)."""

    def __init__(self, *args, fail_after, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_after = fail_after
        self.period_size = None

    def write(self, block):
        self.fail_after -= 1
        if self.fail_after < 0:
            raise AudioError(f"{self.name}: playback failed (device unplugged)")
        super().write(block)


def test_a_lost_sound_card_is_reopened(tmp_path, models, monkeypatch, caplog):
    opened = []

    def open_configured_sink(audio, *, sample_rate=None, output=None):
        sink = _FlakySink(tmp_path / f"card{len(opened)}.wav",
                          sample_rate=sample_rate or audio.sample_rate,
                          fail_after=20 if not opened else 10 ** 9)
        opened.append(sink)
        return sink

    monkeypatch.setattr("device.performance.open_configured_sink", open_configured_sink)
    caplog.set_level(logging.INFO, logger="device.performance")
    with _Show(_config(tmp_path), pin_factory=MockFactory()) as performance:
        assert _wait_for(lambda: len(opened) == 2 and performance.stream is not None)
        frames = performance.engine.stats.frames
        assert _wait_for(lambda: performance.engine.stats.frames > frames + 10)
    assert "reopening the sound output" in caplog.text
    assert "sound output is back" in caplog.text


def test_auto_decides_once_and_a_lost_card_is_not_swapped_for_a_file(
        tmp_path, models, monkeypatch):
    """``audio.output: auto`` picks the card at start; when the card then goes, the
    box reopens the card, never a WAV file in its place."""
    opened = []

    def open_configured_sink(audio, *, sample_rate=None, output=None):
        opened.append(output)
        if len(opened) > 1:
            raise AudioError("default: no such sound card (unplugged)")
        return _FlakySink(tmp_path / "card.wav", sample_rate=audio.sample_rate, fail_after=20)

    cards = iter([True])   # a card at start, none after
    monkeypatch.setattr("device.audio.sound_card_present", lambda: next(cards, False))
    monkeypatch.setattr("device.performance.open_configured_sink", open_configured_sink)
    cfg = _config(tmp_path, **{"audio.output": "auto",
                               "audio.wav_path": str(tmp_path / "run.wav")})
    with _Show(cfg, pin_factory=MockFactory()) as performance:
        assert _wait_for(lambda: len(opened) >= 3, timeout=10)
        assert performance.status_text().startswith("no sound: no sound output (default: no "
                                                    "such sound card")
        assert performance._state()["state"] == "no sound"
    assert set(opened) == {"alsa"}
    assert not (tmp_path / "run.wav").exists()


_CARD_SCRIPT = """\
# An ALSA file PCM's pipe: a sound card that can be unplugged and plugged back.
[ -e "$1/unplugged" ] && exit 1
echo $$ > "$1/card.pid"
exec cat >> "$1/card.raw"
"""


def test_a_card_lost_through_real_alsa_silences_health_until_it_is_back(
        tmp_path, models, notify_socket, monkeypatch):
    """Through the real ALSA library: a card (a file PCM piping to a process) that
    goes away mid-show. While it is gone the status says "no sound", no WATCHDOG=1
    is sent and nothing is written anywhere else; when it comes back, sound reaches
    it again and the watchdog is fed again."""
    pytest.importorskip("alsaaudio")
    path, messages = notify_socket
    script = tmp_path / "card.sh"
    script.write_text(_CARD_SCRIPT)
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.card {\n  type file\n  slave.pcm { type null }\n'
                    f'  file "|/bin/sh {script} {tmp_path}"\n  format "raw"\n}}\n')
    raw, pid = tmp_path / "card.raw", tmp_path / "card.pid"
    cfg = _config(tmp_path, **{"audio.output": "alsa:card", "audio.clock": "system",
                               "audio.wav_path": str(tmp_path / "run.wav"),
                               "service.stall_s": 1.0, "service.status_every_s": 1.0})
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf))
    notifier = Notifier(str(path), watchdog_interval_s=1.0)
    with _Show(cfg, notifier=notifier, pin_factory=MockFactory()) as performance:
        assert _wait_for(lambda: "READY=1" in "\n".join(messages))
        assert _wait_for(lambda: raw.exists() and raw.stat().st_size > 22050)
        (tmp_path / "unplugged").touch()
        os.kill(int(pid.read_text()), signal.SIGTERM)   # the card goes
        assert _wait_for(lambda: performance._state()["state"] == "no sound")
        time.sleep(1.5)                                  # past the stall limit
        lost_at, size = len(messages), raw.stat().st_size
        time.sleep(2.0)
        while_lost = messages[lost_at:]
        assert not any("WATCHDOG=1" in m for m in while_lost)
        assert any("STATUS=audio stalled" in m or "STATUS=no sound" in m
                   for m in messages[lost_at - 5:])
        assert raw.stat().st_size == size                # nothing reached it
        (tmp_path / "unplugged").unlink()                # the card is back
        assert _wait_for(lambda: raw.stat().st_size > size + 22050, timeout=10)
        back_at = len(messages)
        assert _wait_for(lambda: any("WATCHDOG=1" in m for m in messages[back_at:]))
        assert _wait_for(lambda: performance.status_text().startswith("playing default"))
    assert not (tmp_path / "run.wav").exists()


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    messages = []
    stop = threading.Event()

    def receive():
        while not stop.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except OSError:
                pass

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    yield path, messages
    stop.set()
    thread.join(2)
    sock.close()


def test_camera_absent_at_start_is_retried_and_reported(tmp_path, models, notify_socket):
    path, messages = notify_socket
    cfg = _config(tmp_path, **{"camera.source": "pi"})
    stop = threading.Event()
    performance = Performance(cfg, notifier=Notifier(str(path)), pin_factory=MockFactory())
    threading.Timer(2.5, stop.set).start()
    started = time.monotonic()
    assert performance.run(stop) is None           # never got a camera, stopped cleanly
    assert time.monotonic() - started < 5
    text = "\n".join(messages)
    assert text.count("waiting for the camera") >= 2   # tried again, said so each time
    assert "EXTEND_TIMEOUT_USEC=" in text
    assert "READY=1" not in text                    # not ready without a camera


def test_systemctl_start_and_stop(tmp_path, models, notify_socket):
    """`python -m device run` under the notify protocol: READY, STATUS, WATCHDOG, a stop in 2 s."""
    path, messages = notify_socket
    config = tmp_path / "device.yaml"
    config.write_text(f"camera: {{source: synthetic}}\n"
                      f"audio: {{output: 'wav:{tmp_path / 'live.wav'}'}}\n"
                      f"controls: {{pin_factory: mock}}\n"
                      f"service: {{status_every_s: 1.0}}\n")
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    process = subprocess.Popen([sys.executable, "-m", "device", "--config", str(config), "run"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert _wait_for(lambda: "READY=1" in "\n".join(messages), timeout=30)
        assert _wait_for(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3)
        assert _wait_for(lambda: any("STATUS=playing default" in m for m in messages))
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = process.communicate(timeout=10)
        assert time.monotonic() - started < 2.0
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert any("STOPPING=1" in m for m in messages)
    audio, rate = read_wav(tmp_path / "live.wav")     # the WAV was finished properly
    assert rate == 22050 and len(audio) > rate


def _write_room(path, *, moving, still, fps=30):
    """A 64x48 video: a bar that crosses the picture for ``moving`` frames, then a
    room where nothing moves for ``still`` frames."""
    def frames():
        for i in range(moving + still):
            image = np.full((48, 64, 3), 40, np.uint8)
            x = (3 * min(i, moving - 1)) % 56
            image[8:40, x:x + 8] = 220
            yield image

    write_video(path, frames(), fps=fps)


def test_a_room_left_still_fades_out_and_the_status_says_why(tmp_path, models):
    video = tmp_path / "room.mp4"
    _write_room(video, moving=45, still=150)
    # The factory model is itself silent for a still window, as its instrument is;
    # the tiny model, like a model fine-tuned on songs, plays an empty room on.
    cfg = _config(tmp_path, **{"camera.source": f"video:{video}", "motion.quiet_after_s": 1.0,
                               "model.bundle": str(models / "tiny.dsb")})
    performance = Performance(cfg, pin_factory=MockFactory())
    stats = performance.run(threading.Event())
    assert stats.frames == 195
    audio, _ = read_wav(tmp_path / "out.wav")
    hops = audio.reshape(195, 735)
    assert np.abs(hops[:45]).max(axis=1).min() > 0          # the dance is heard
    # From a second of stillness, two seconds of fade, then silence to the end.
    assert np.any(hops[45 + 60]) and not np.any(hops[45 + 30 + 60 + 1:])
    state = performance._state()
    assert state["quiet"] and state["still_s"] == 5.0
    assert "quiet: no motion for 5 s" in performance.status_text()
