"""The box's performance: buttons, model cycling, faults, systemd, stopping."""

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
from device.performance import Performance, next_bundle
from device.service import Notifier
from tests.conftest import ROOT


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


def test_a_bad_bundle_is_refused_and_the_playing_one_kept(tmp_path, models, caplog):
    (models / "tiny.dsb").write_bytes((models / "tiny.dsb").read_bytes()[:-300])
    with _Show(_config(tmp_path), pin_factory=MockFactory()) as performance:
        performance._events.put(("next-model", None))
        assert _wait_for(lambda: "keeping default" in caplog.text)
        time.sleep(0.2)
        assert performance.engine.bundle.manifest.name == "default"
        frames = performance.engine.stats.frames
        assert _wait_for(lambda: performance.engine.stats.frames > frames + 5)  # still playing


def test_next_bundle_wraps_around(tmp_path):
    for name in ("a.dsb", "b.dsb", "c.dsb"):
        (tmp_path / name).write_bytes(b"")
    assert next_bundle(tmp_path, tmp_path / "b.dsb").name == "c.dsb"
    assert next_bundle(tmp_path, tmp_path / "c.dsb").name == "a.dsb"
    assert next_bundle(tmp_path / "empty", tmp_path / "c.dsb") is None


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

    def open_configured_sink(audio, *, sample_rate=None):
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
