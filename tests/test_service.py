"""The systemd side of the box: notify protocol, health watchdog, stop signals, unit file.

Messages go over real AF_UNIX datagram sockets (a path and an abstract name),
exactly as systemd receives them; stop signals are sent to real subprocesses;
the unit file is checked by systemd's own ``systemd-analyze`` where it exists.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from device.service import (
    HealthWatchdog,
    JournalFormatter,
    Notifier,
    install_stop_signals,
    status_line,
    stderr_is_journal,
    watchdog_interval,
)

from tests.conftest import exposure, systemd_analyze, verify_quietly

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "dancesampler.service"


class Receiver:
    """The systemd end of a notify socket: collects datagrams as text."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def next(self, timeout: float = 2.0) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Every message that arrives within ``seconds``, with its arrival time."""
        messages, end = [], time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            message = self.next(left)
            if message is not None:
                messages.append((time.monotonic(), message))
        return messages


@pytest.fixture
def notify_path():
    # AF_UNIX paths are limited to 108 bytes, which pytest's tmp_path can exceed.
    folder = Path(tempfile.mkdtemp(prefix="ds-notify-"))
    yield folder / "notify"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def receiver(notify_path, monkeypatch):
    """A bound notify socket with $NOTIFY_SOCKET naming it, as systemd sets it up."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield Receiver(sock)
    sock.close()


# ---- the notify protocol -------------------------------------------------------

def test_ready_status_and_stopping_arrive(receiver):
    notifier = Notifier.from_environment()
    assert notifier.enabled
    assert notifier.ready("playing default")
    assert receiver.next() == "READY=1\nSTATUS=playing default"
    # A newline would start a new assignment: STATUS is always one line.
    assert notifier.status("camera stalled:\nno frame")
    assert receiver.next() == "STATUS=camera stalled: no frame"
    notifier.watchdog()
    assert receiver.next() == "WATCHDOG=1"
    notifier.stopping("stopping: SIGTERM")
    assert receiver.next() == "STOPPING=1\nSTATUS=stopping: SIGTERM"
    notifier.close()
    assert not notifier.status("after close")


def test_abstract_socket_name(monkeypatch):
    name = f"dancesampler-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert notifier.address == "\0" + name
        assert notifier.ready()
        assert Receiver(sock).next() == "READY=1"
    finally:
        sock.close()


def test_no_notify_socket_is_a_quiet_no_op(monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier.from_environment()
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.ready("x") and not notifier.status("y") and not notifier.watchdog()
    notifier.stopping()
    assert not caplog.records


def test_unusable_notify_socket_value_is_ignored_with_a_warning(caplog):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "neither a path nor an abstract socket" in caplog.text


def test_send_failure_warns_once_and_never_raises(receiver, notify_path, caplog):
    notifier = Notifier.from_environment()
    receiver.sock.close()
    notify_path.unlink()  # systemd gone (or the socket replaced): sends fail
    with caplog.at_level(logging.INFO, logger="device.service"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.status("still playing")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()
        # When the socket is back, messages flow again and that is said once.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        try:
            assert notifier.status("back")
            assert Receiver(sock).next() == "STATUS=back"
        finally:
            sock.close()
    assert "works again" in caplog.text


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "10000000"}, 10.0),
    ({"WATCHDOG_USEC": "250000", "WATCHDOG_PID": "{pid}"}, 0.25),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "me"}, None),
    ({"WATCHDOG_USEC": "ten"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
])
def test_watchdog_interval_from_environment(env, expected):
    env = {key: value.format(pid=os.getpid()) for key, value in env.items()}
    assert watchdog_interval(env) == expected
    assert Notifier.from_environment(env).watchdog_interval_s == expected


# ---- the health watchdog ---------------------------------------------------------

class RecordingNotifier(Notifier):
    """A notifier that keeps its messages instead of sending them."""

    def __init__(self):
        super().__init__(None)
        self.sent: list[str] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append("\n".join(assignments))
        return True

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_checks_step_by_step():
    clock, notifier = FakeClock(), RecordingNotifier()
    health = HealthWatchdog(notifier, interval_s=2.0, stall_s=3.0, clock=clock)
    playing = "playing default (30 fps, compute 0.4 ms, 0 underruns)"
    health.status(playing)
    assert notifier.take() == []  # the live loop only stores it

    # Healthy at start (the loop has stall_s to deliver), but not ready before sound.
    assert health.check()
    assert notifier.take() == [f"STATUS={playing}", "WATCHDOG=1"]
    clock.now += 0.5
    health.frame_arrived()
    health.audio_fed()
    assert health.check()
    assert notifier.take() == ["READY=1"]  # no ping: the last was 0.5 s ago
    clock.now += 0.6
    health.frame_arrived()
    health.audio_fed()
    assert health.check()
    assert notifier.take() == ["WATCHDOG=1"]  # interval / 2 = 1 s since the last ping
    assert health.check() and notifier.take() == []  # nothing new to say

    # The loop is stuck reading the camera: its last act was writing audio.
    clock.now += 3.2
    assert not health.check()
    assert notifier.take() == ["STATUS=camera stalled: no frame for 3.2 s"]
    assert health.stalled == "camera stalled: no frame for 3.2 s"
    clock.now += 0.5
    assert not health.check()
    assert notifier.take() == ["STATUS=camera stalled: no frame for 3.7 s"]

    # Frames return: the normal status is back and a ping goes out at once.
    health.frame_arrived()
    health.audio_fed()
    assert health.check()
    assert notifier.take() == [f"STATUS={playing}", "WATCHDOG=1"]
    health.status("playing default (29 fps, compute 0.5 ms, 1 underrun)")
    assert health.check()
    assert notifier.take() == ["STATUS=playing default (29 fps, compute 0.5 ms, 1 underrun)"]

    # Stuck after a frame (in the model or the sound card): audio is to blame.
    clock.now += 0.1
    health.frame_arrived()
    clock.now += 3.5
    assert not health.check()
    assert notifier.take() == ["STATUS=audio stalled: nothing written for 3.6 s"]


def test_ready_carries_a_status_not_yet_shown():
    clock, notifier = FakeClock(), RecordingNotifier()
    health = HealthWatchdog(notifier, interval_s=None, stall_s=3.0, clock=clock)
    clock.now += 0.1
    health.audio_fed()
    health.status("playing default")
    assert health.check()
    assert notifier.take() == ["READY=1\nSTATUS=playing default"]


def test_health_without_systemd_watchdog_still_reports_stalls():
    clock, notifier = FakeClock(), RecordingNotifier()
    health = HealthWatchdog(notifier, interval_s=None, stall_s=1.0, clock=clock)
    health.audio_fed()
    assert health.check()
    clock.now += 1.5
    assert not health.check()
    assert "WATCHDOG=1" not in "".join(notifier.sent)
    assert notifier.sent[-1] == "STATUS=camera stalled: no frame for 1.5 s"


def test_health_rejects_nonsense_periods():
    with pytest.raises(ValueError):
        HealthWatchdog(RecordingNotifier(), interval_s=1.0, stall_s=0)
    with pytest.raises(ValueError):
        HealthWatchdog(RecordingNotifier(), interval_s=0, stall_s=1.0)


def test_watchdog_pings_only_while_frames_flow(receiver, monkeypatch):
    """Over a real socket, with a live loop at 30 Hz: pings, a camera stall, recovery."""
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notifier = Notifier.from_environment()
    assert notifier.watchdog_interval_s == 0.2
    health = HealthWatchdog(notifier, interval_s=notifier.watchdog_interval_s, stall_s=0.3)
    playing = "playing test (30 fps, compute 0.1 ms, 0 underruns)"
    health.status(playing)

    flowing, done = threading.Event(), threading.Event()

    def live_loop():  # frame in, hop out, 30 times a second
        while not done.is_set():
            if flowing.is_set():
                health.frame_arrived()
                health.audio_fed()
            time.sleep(1 / 30)

    flowing.set()
    loop = threading.Thread(target=live_loop, daemon=True)
    loop.start()
    health.start()
    try:
        first = [m for _, m in receiver.collect(0.8)]
        # Sound was already flowing at the first check: READY and a ping at once.
        assert first[:2] == [f"READY=1\nSTATUS={playing}", "WATCHDOG=1"]
        assert first.count("WATCHDOG=1") >= 4  # every 0.1 s: 8 expected

        flowing.clear()  # the camera stops delivering
        cut = time.monotonic()
        stalled = receiver.collect(0.9)
        stall_reports = [(t, m) for t, m in stalled if m.startswith("STATUS=camera stalled")]
        assert stall_reports, stalled
        first_report = stall_reports[0][0]
        assert first_report - cut < 0.6
        assert re.fullmatch(r"STATUS=camera stalled: no frame for 0\.[3-9] s",
                            stall_reports[0][1])
        assert not [m for t, m in stalled if m == "WATCHDOG=1" and t > first_report]
        assert health.stalled.startswith("camera stalled")

        flowing.set()  # frames are back
        resumed = [m for _, m in receiver.collect(0.5)]
        assert f"STATUS={playing}" in resumed
        assert resumed.count("WATCHDOG=1") >= 2
        assert health.stalled is None
    finally:
        assert health.stop(timeout=1.0)
        done.set()
        loop.join(1.0)


def test_status_line():
    assert (status_line("default", fps=29.97, compute_ms=0.42, underruns=0)
            == "playing default (30 fps, compute 0.4 ms, 0 underruns)")
    assert (status_line("salsa", fps=30, compute_ms=1.25, underruns=1)
            == "playing salsa (30 fps, compute 1.2 ms, 1 underrun)")
    assert status_line("demo", fps=30, compute_ms=2, state="recording") == \
        "recording demo (30 fps, compute 2.0 ms)"
    assert status_line("default", fps=30, compute_ms=0.4, underruns=0, still_s=12.3) == \
        "playing default (quiet: no motion for 12 s, 30 fps, compute 0.4 ms, 0 underruns)"


def test_journal_formatter_prefixes_priorities():
    formatter = JournalFormatter("%(levelname)s %(name)s: %(message)s")

    def line(level, message="m"):
        return formatter.format(logging.LogRecord("device", level, __file__, 1, message,
                                                  None, None))

    assert line(logging.WARNING) == "<4>WARNING device: m"
    assert line(logging.ERROR).startswith("<3>")
    assert line(logging.INFO).startswith("<6>")
    assert line(logging.DEBUG).startswith("<7>")
    assert line(logging.INFO, "two\nlines") == "<6>INFO device: two\n<6>lines"


def test_stderr_is_journal_compares_device_and_inode(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal()  # inherited by a child whose stderr went elsewhere
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal()


# ---- stop signals ------------------------------------------------------------------

LOOP = """
import logging, sys, threading, time
from device.service import install_stop_signals
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
stop = threading.Event()
install_stop_signals(stop, deadline_s={deadline})
print("playing", flush=True)
while {condition}:
    time.sleep(1 / 30)  # one camera frame
time.sleep(0.1)  # the fade-out
print("stopped", flush=True)
"""


def _start_loop(condition: str, deadline: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOOP.format(condition=condition,
                                                               deadline=deadline)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "playing\n"
    return proc


def test_sigterm_stops_the_loop_within_two_seconds():
    proc = _start_loop("not stop.is_set()", deadline=3.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    took = time.monotonic() - sent
    assert proc.returncode == 0, err
    assert took < 2.0
    assert out == "stopped\n"
    assert "SIGTERM received: stopping" in err


def test_a_stuck_loop_is_ended_at_the_deadline_with_its_stack():
    proc = _start_loop("True", deadline=0.5)  # never looks at stop
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 1
    assert 0.5 <= time.monotonic() - sent < 2.0
    assert "still running 0.5 s after SIGTERM" in err
    assert 'File "<string>", line 9' in err  # where the main thread was stuck
    assert "stopped" not in out


def test_stop_signal_in_process_and_restore():
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    handle = install_stop_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2.0)
        assert handle.received == "SIGTERM"
    finally:
        handle.restore()
    assert signal.getsignal(signal.SIGTERM) is before


# ---- the unit file ---------------------------------------------------------------

def test_unit_file_verifies(tmp_path):
    # A copy naming this Python draws no complaint; the real file, only the one
    # about the box's Python being absent here.
    execstart = verify_quietly(UNIT, tmp_path)
    tool = systemd_analyze()
    result = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True,
                            timeout=60)
    complaints = (result.stdout + result.stderr).strip().splitlines()
    if Path(execstart.group(1)).exists():
        assert not complaints and result.returncode == 0
    else:
        assert complaints == ["dancesampler.service: Command /opt/dancesampler/current/.venv/"
                              "bin/python is not executable: No such file or directory"]


def test_unit_file_exposure_is_low():
    level, output = exposure(UNIT)
    assert level <= 4.0, output
