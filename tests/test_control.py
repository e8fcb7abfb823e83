"""The control channel of a running box: a real UNIX socket, a real show with a
real take recorder; `device ctl` as a technician runs it."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from device.config import load_device_config, with_overrides
from device.control import ControlError, request
from device.performance import Performance
from device.recorder import TakeRecorder
from tests.conftest import ROOT, one_line_error
from tests.test_recorder import SR, _write_wav


@pytest.fixture
def pins():
    """The show's simulated GPIO pins: its buttons, pressed from a test."""
    return MockFactory()


@pytest.fixture
def show(tmp_path, default_bundle, pins):
    """A performance playing with a recorder and its control channel at ctl.sock."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.dsb", "b.dsb"):
        (models / name).write_bytes(default_bundle.read_bytes())
    cfg = with_overrides(load_device_config(), {
        "camera.source": "synthetic", "audio.output": f"wav:{tmp_path / 'out.wav'}",
        "model.bundle": str(models / "a.dsb"), "model.models_dir": str(models),
        "controls.pin_factory": "mock"})
    line = _write_wav(tmp_path / "line.wav", 0.1 * np.ones(30 * SR, np.float32))
    recorder = TakeRecorder.from_config(cfg, audio_in=f"wav:{line}", root=tmp_path / "takes")
    path = tmp_path / "run" / "ctl.sock"
    performance = Performance(cfg, recorder=recorder, pin_factory=pins, control=path)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: performance.run(stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not path.exists() or performance.engine is None or \
            performance.engine.stats.frames < 5:
        assert time.monotonic() < deadline, "the show did not start"
        time.sleep(0.02)
    yield performance, path, recorder
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert not path.exists(), "the socket was left behind"


def ctl(*args):
    return subprocess.run([sys.executable, "-m", "device", "ctl", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_ctl_records_stops_and_deletes_a_take_as_the_button_does(show, tmp_path):
    performance, path, recorder = show
    assert stat.S_IMODE(path.stat().st_mode) == 0o660

    started = ctl("record", "--socket", str(path), "--json")
    assert started.returncode == 0, started.stderr
    reply = json.loads(started.stdout)
    assert reply["v"] == 1 and reply["ok"] and reply["model"] == "default"
    deadline = time.monotonic() + 10
    while not recorder.recording:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = request("status", path)
    assert status["state"] == "recording" and status["status"].startswith("recording default")
    assert request("record", path)["note"] == "already recording"
    time.sleep(1.0)

    stopped = ctl("stop", "--socket", str(path))
    assert stopped.returncode == 0, stopped.stderr
    info = recorder.wait()
    assert info.clean and info.frames >= 20 and info.path.parent == tmp_path / "takes"
    assert request("stop", path)["note"] == "not recording"
    status = ctl("status", "--socket", str(path), "--json")
    assert status.returncode == 0, status.stderr
    reply = json.loads(status.stdout)
    assert reply["ok"] and reply["state"] == "playing" and reply["model"] == "default"
    assert reply["status"].startswith("playing default (30 fps")

    assert request("delete-last", path)["ok"]
    assert not info.path.exists()


def test_the_button_and_the_channel_act_on_the_same_take(show, pins):
    """A take started by the record button is stopped by ``ctl stop``, and one
    started by ``ctl record`` by the button: one recorder, one way of acting."""
    performance, path, recorder = show
    button = pins.pin(performance.cfg.controls.record_pin)

    def press():
        button.drive_low()            # pull-up: pressed is low
        time.sleep(0.2)
        button.drive_high()

    def until(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.02)

    press()
    until(lambda: recorder.recording)
    assert request("status", path)["state"] == "recording"
    time.sleep(0.5)
    assert request("stop", path)["ok"]
    first = recorder.wait()
    assert first.clean and first.frames > 0

    assert request("record", path)["ok"]
    until(lambda: recorder.recording)
    time.sleep(0.5)
    press()
    until(lambda: not recorder.recording)
    second = recorder.wait()
    assert second.clean and second.path != first.path
    assert request("status", path)["state"] == "playing"


def test_ctl_next_model_crossfades_to_the_next_bundle(show):
    performance, path, _ = show
    reply = request("next-model", path)
    assert reply["ok"] and reply["note"] == "loading the next model"
    deadline = time.monotonic() + 15
    while performance.engine.bundle.path.name != "b.dsb":
        assert time.monotonic() < deadline, "the next model never played"
        time.sleep(0.05)
    assert ctl("status", "--socket", str(path)).stdout.startswith("playing default")


def test_a_malformed_request_is_answered_and_the_show_goes_on(show):
    performance, path, _ = show
    for line, expected in ((b'{"v": 1, "cmd": "dance"}\n', "unknown command 'dance'"),
                           (b'{"v": 7, "cmd": "status"}\n', "protocol version 7"),
                           (b"not json\n", "not one JSON object")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.sendall(line)
            reply = json.loads(s.makefile().readline())
        assert reply == {"v": 1, "ok": False, "error": reply["error"]}
        assert expected in reply["error"]
    frames = performance.engine.stats.frames
    time.sleep(0.3)
    assert performance.engine.stats.frames > frames


def test_ctl_without_a_running_box_is_one_line(tmp_path):
    missing = tmp_path / "nothing.sock"
    one_line_error(ctl("status", "--socket", str(missing)), "no box is running here",
                   str(missing))
    with pytest.raises(ControlError, match="nothing listens"):
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(tmp_path / "stale.sock"))
        stale.close()
        request("status", tmp_path / "stale.sock")
    assert os.path.exists(tmp_path / "stale.sock")


def test_ctl_sets_volume_sensitivity_dynamics_and_strike_and_picks_a_voice_by_name(show):
    performance, path, _ = show
    turned = ctl("volume", "0.3", "--socket", str(path), "--json")
    assert turned.returncode == 0, turned.stderr
    assert json.loads(turned.stdout)["volume"] == 0.3
    assert performance.stream._volume_target == 0.3     # the audio thread glides there
    assert request("sensitivity", path, value=2.5)["sensitivity"] == 2.5
    assert performance.engine.gain.sensitivity == 2.5
    assert performance.engine.dynamics.depth == 0.5          # motion.dynamics_depth
    widened = ctl("dynamics", "1", "--socket", str(path), "--json")
    assert widened.returncode == 0, widened.stderr
    assert json.loads(widened.stdout)["dynamics"] == 1.0
    assert performance.engine.dynamics.depth == 1.0
    assert performance.engine.strikes.strike == 1.0            # motion.strike
    softer = ctl("strike", "0.5", "--socket", str(path), "--json")
    assert softer.returncode == 0, softer.stderr
    assert json.loads(softer.stdout)["strike"] == 0.5
    assert performance.engine.strikes.strike == 0.5
    status = request("status", path)
    assert (status["volume"], status["sensitivity"], status["dynamics"], status["strike"]) == \
        (0.3, 2.5, 1.0, 0.5)

    for args, fragment in ((("volume", "1.5"), "volume takes a number from 0 to 1, not 1.5"),
                           (("sensitivity", "loud"), "sensitivity takes a number from 0.05 "
                                                     "to 20, not 'loud'"),
                           (("dynamics", "2"), "dynamics takes a number from 0 to 1, not 2.0"),
                           (("strike", "-3"), "strike takes a number from 0 to 4, not -3.0"),
                           (("volume",), "volume needs a value"),
                           (("stop", "now"), "stop takes no value")):
        one_line_error(ctl(*args, "--socket", str(path)), fragment)
    refused = request("voice", path, value="nothing")
    assert not refused["ok"] and "no voice 'nothing'" in refused["error"]
    assert "(there: a, b)" in refused["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:   # what ctl never sends
        s.connect(str(path))
        s.sendall(b'{"v": 1, "cmd": "volume", "value": true}\n')
        assert "volume takes a number" in json.loads(s.makefile().readline())["error"]

    picked = ctl("voice", "b", "--socket", str(path))
    assert picked.returncode == 0, picked.stderr
    assert "(loading b)" in picked.stdout
    deadline = time.monotonic() + 15
    while performance.engine.bundle.path.name != "b.dsb":
        assert time.monotonic() < deadline, "voice b never played"
        time.sleep(0.05)
    assert request("voice", path, value="b")["note"] == "already playing b"
