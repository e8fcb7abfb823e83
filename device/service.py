"""The box as a systemd service: notify protocol, health watchdog, stop signals.

systemd starts ``python -m device run`` as a ``Type=notify`` service
(``systemd/dancesampler.service``). The program says READY=1 once sound is
flowing, keeps a one-line STATUS that a technician reads in ``systemctl status``,
and sends WATCHDOG=1 only while camera frames arrive and audio is written, so a
wedged camera or sound card gets the process restarted instead of leaving a
silent box in a gallery.

The protocol (sd_notify(3)) is one datagram of ``KEY=value`` lines sent to the
AF_UNIX socket named by $NOTIFY_SOCKET; it is implemented here so the device
needs no python-systemd. Outside systemd every call does nothing. Telling
systemd must never stop the sound: a failed send is logged once and otherwise
ignored, and the live loop itself only stores timestamps and text; the sending
happens in the watchdog's own thread.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.2
"""Longest a send may block when systemd's queue is full; a message is dropped after."""


def _socket_address(value: str) -> str | None:
    """$NOTIFY_SOCKET as a Python AF_UNIX address, or None when there is none."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        # An abstract socket: the name starts with a NUL byte instead of '@'.
        return "\0" + value[1:]
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket name; "
                "not notifying systemd", value)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The systemd watchdog timeout in seconds (from $WATCHDOG_USEC), or None.

    None also when $WATCHDOG_PID names another process: the variables were
    inherited from a parent that systemd is watching, not meant for us.
    """
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a process id; ignoring the watchdog", pid)
            return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive integer; ignoring the watchdog", usec)
        return None
    return value / 1e6


class Notifier:
    """Sends sd_notify messages to systemd; with no address, does nothing.

    Safe to call from any thread. A send that fails is logged at WARNING once
    (and once more after it has worked again), never raised.
    """

    def __init__(self, address: str | None = None, *, watchdog_interval_s: float | None = None):
        self.address = address
        """AF_UNIX address ('\\0name' for an abstract socket), or None outside systemd."""
        self.watchdog_interval_s = watchdog_interval_s
        """The systemd watchdog timeout in seconds, or None when there is no watchdog."""
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False
        if address is not None:
            try:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.settimeout(SEND_TIMEOUT_S)
            except OSError as exc:
                log.warning("cannot create the systemd notify socket (%s); not notifying", exc)
                self._socket = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier that $NOTIFY_SOCKET and $WATCHDOG_USEC/$WATCHDOG_PID describe."""
        env = os.environ if environ is None else environ
        return cls(_socket_address(env.get("NOTIFY_SOCKET", "")),
                   watchdog_interval_s=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere (we run under systemd)."""
        return self._socket is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one message; True when it was sent."""
        sock = self._socket  # once: close() may run in another thread
        if sock is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            sock.sendto(payload, self.address)
        except OSError as exc:  # a closed socket (EBADF) lands here too
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                log.warning("cannot notify systemd at %r (%s); playing on without it",
                            self._printable_address(), exc)
            return False
        if self._failing:
            with self._lock:
                self._failing = False
            log.info("notifying systemd works again")
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup is done; systemd now counts the service as active."""
        return self.notify("READY=1", *_status_field(status))

    def status(self, text: str) -> bool:
        """STATUS=: the one line shown by ``systemctl status``."""
        return self.notify(*_status_field(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1: we are alive; systemd restarts us if these stop."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutting down on purpose."""
        return self.notify("STOPPING=1", *_status_field(status))

    def close(self) -> None:
        """Release the socket; later calls do nothing. Safe to call twice."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def _printable_address(self) -> str:
        address = self.address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _status_field(text: str | None) -> tuple[str, ...]:
    # STATUS is one line: a newline would start a new KEY=value assignment.
    return () if text is None else ("STATUS=" + " ".join(str(text).split()),)


def status_line(model: str, *, fps: float, compute_ms: float, underruns: int | None = None,
                state: str = "playing", voice: str = "model", still_s: float | None = None
                ) -> str:
    """The periodic STATUS, e.g. ``playing default (30 fps, compute 0.4 ms, 0 underruns)``;
    a corpus voice says so (``playing voice-… (corpus voice, 30 fps, …)``), and a box
    faded out for want of motion says for how long (``still_s``: ``quiet: no motion
    for 12 s``)."""
    parts = [f"{fps:.0f} fps", f"compute {compute_ms:.1f} ms"]
    if voice != "model":
        parts.insert(0, f"{voice} voice")
    if still_s is not None:
        parts.insert(0, f"quiet: no motion for {still_s:.0f} s")
    if underruns is not None:
        parts.append(f"{underruns} underrun{'' if underruns == 1 else 's'}")
    return f"{state} {model} ({', '.join(parts)})"


class HealthWatchdog:
    """Pings the systemd watchdog only while frames arrive and audio is written.

    The live loop calls ``frame_arrived()`` after each camera frame,
    ``audio_fed()`` after each hop is written, and now and then ``status(text)``;
    all three only store a value, so the loop never waits on a socket or a lock.
    A daemon thread looks at them a few times per stall period and does the
    talking: while frames and audio are both recent (within ``stall_s``) it sends
    WATCHDOG=1 every ``interval_s / 2`` and passes the status on; when either
    stops it stops pinging, so systemd kills and restarts the process
    ``interval_s`` after the last ping, and it shows the reason in STATUS
    ("camera stalled: no frame for 3.2 s"). When both flow again it pings at once
    and puts the normal status back.

    It also sends READY=1 as soon as the first hop has been written, so "active"
    in ``systemctl`` means the box is making sound.
    """

    def __init__(self, notifier: Notifier, *, interval_s: float | None, stall_s: float = 3.0,
                 announce_ready: bool = True, clock: Callable[[], float] = time.monotonic):
        if stall_s <= 0:
            raise ValueError(f"stall_s must be positive, not {stall_s}")
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"interval_s must be positive or None, not {interval_s}")
        self.notifier = notifier
        self.interval_s = interval_s
        """The systemd watchdog timeout; pings go out every half of it. None: no pings."""
        self.stall_s = stall_s
        """Seconds without a frame (or without audio written) that count as a stall."""
        self._announce_ready = announce_ready
        self._clock = clock
        self._started = clock()
        # Both start "just now": the loop has stall_s to deliver its first frame.
        self._last_frame = self._started
        self._last_audio = self._started
        self._status: str | None = None  # written by the loop, read by the thread
        self._shown: str | None = None  # the normal status systemd has now
        self._last_ping: float | None = None
        self._ready = False
        self._stalled: str | None = None
        self._stalled_since = 0.0
        self._lock = threading.Lock()  # between check() callers, never the live loop
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        checks = [0.5, stall_s / 4] + ([interval_s / 4] if interval_s else [])
        self._tick_s = min(checks)

    # ---- called from the live loop: each stores one value, nothing more ----

    def frame_arrived(self) -> None:
        """A camera frame has arrived."""
        self._last_frame = self._clock()

    def audio_fed(self) -> None:
        """A hop of audio has been written to the sink."""
        self._last_audio = self._clock()

    def status(self, text: str) -> None:
        """Set the normal STATUS line; it goes out at the next check, unless a stall
        is being reported, in which case it goes out when the stall ends."""
        self._status = text

    # ---- the checking thread ----

    @property
    def stalled(self) -> str | None:
        """What is stalled, as the STATUS says it, or None while healthy."""
        return self._stalled

    def check(self) -> bool:
        """Look at the last frame and hop once; ping, report or recover. True if healthy.

        The thread calls this every tick; tests may call it with a fake clock.
        """
        now = self._clock()
        last_frame, last_audio = self._last_frame, self._last_audio
        problem = _stall(now - last_frame, now - last_audio, last_frame > last_audio,
                         self.stall_s)
        with self._lock:
            if problem is not None:
                if self._stalled is None:
                    self._stalled_since = now
                    log.warning("%s; no longer pinging the systemd watchdog", problem)
                self._stalled = problem
                self._shown = None  # put the normal status back when it ends
                self.notifier.status(problem)
                return False
            recovered = self._stalled is not None
            if recovered:
                log.info("frames and audio flowing again after %.1f s; pinging the watchdog",
                         now - self._stalled_since)
                self._stalled = None
            fields = []
            if self._announce_ready and not self._ready and last_audio > self._started:
                self._ready = True
                fields.append("READY=1")
            status = self._status
            if status is not None and status != self._shown:
                self._shown = status
                fields.extend(_status_field(status))
            if fields:
                self.notifier.notify(*fields)
            if self.interval_s is not None and (
                    recovered or self._last_ping is None
                    or now - self._last_ping >= self.interval_s / 2):
                self._last_ping = now
                self.notifier.watchdog()
            return True

    def start(self) -> HealthWatchdog:
        """Start the checking thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="health-watchdog",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the checking thread; False (and a WARNING) if it did not end in time."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("health watchdog thread did not stop within %.1f s", timeout)
            return False
        self._thread = None
        return True

    def __enter__(self) -> HealthWatchdog:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # a bug here must not end the checks for good
                log.exception("health watchdog check failed")
            if self._stopping.wait(self._tick_s):
                return


def _stall(frame_age: float, audio_age: float, frame_is_newer: bool,
           stall_s: float) -> str | None:
    """Name what has stalled, or None. The loop reads a frame, then writes a hop:
    if both have stopped, it is stuck in whichever comes after the newer of the two."""
    camera = f"camera stalled: no frame for {frame_age:.1f} s"
    audio = f"audio stalled: nothing written for {audio_age:.1f} s"
    if frame_age > stall_s and audio_age > stall_s:
        return audio if frame_is_newer else camera
    if frame_age > stall_s:
        return camera
    if audio_age > stall_s:
        return audio
    return None


class StopSignals:
    """What ``install_stop_signals`` installed: which signal came, and how to undo it.

    Python's C-level handler writes each signal's number to a pipe
    (``signal.set_wakeup_fd``) even while the main thread is stuck inside C code;
    a small thread reads it, sets the stop event, logs, and keeps the deadline.
    The Python-level handler only records the signal: it runs in the main thread
    between bytecodes, possibly inside a logging call or an ``Event.wait()``, so
    it must take no locks and write no logs.
    """

    def __init__(self, stop: threading.Event, signals: tuple[int, ...],
                 deadline_s: float | None):
        self.stop = stop
        self.signals = frozenset(signals)
        self.deadline_s = deadline_s
        self.received: str | None = None
        """Name of the first stop signal received ("SIGTERM"), or None."""
        self._seen: set[int] = set()
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._disarmed = threading.Event()
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it
        self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)

    def _install(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd,
                                                        warn_on_full_buffer=False)
        self._thread.start()

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and signum in self._seen:
            raise KeyboardInterrupt  # a person pressed Ctrl-C twice: stop waiting
        self._seen.add(signum)
        if self.received is None:
            self.received = signal.Signals(signum).name

    def _watch(self) -> None:
        try:
            signum = self._wait_for_signal()
            if signum is None:
                return
            name = signal.Signals(signum).name
            log.info("%s received: stopping", name)
            self.stop.set()
            if self.deadline_s is None or self._disarmed.wait(self.deadline_s):
                return
            # Still running: some part did not stop. Say where every thread is,
            # then go, rather than leave a half-stopped process for SIGKILL.
            # Straight to fd 2, like faulthandler: the stuck main thread may hold
            # the logging lock.
            message = (f"dancesampler: still running {self.deadline_s:.1f} s after {name}; "
                       "stacks of every thread follow, then exiting\n")
            os.write(2, (("<3>" if stderr_is_journal() else "") + message).encode())
            faulthandler.dump_traceback(all_threads=True)
            os._exit(1)
        finally:
            os.close(self._read_fd)

    def _wait_for_signal(self) -> int | None:
        while True:
            data = os.read(self._read_fd, 64)
            if not data or self._disarmed.is_set():
                return None
            for signum in data:
                if signum in self.signals:
                    return signum

    def restore(self) -> None:
        """Put the previous handlers back and cancel the deadline. Main thread only."""
        if self._disarmed.is_set():
            return
        self._disarmed.set()
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        try:
            os.write(self._write_fd, b"\0")  # wake the watcher so it can end
        except OSError:
            pass
        os.close(self._write_fd)


def install_stop_signals(stop: threading.Event, *, deadline_s: float | None = None,
                         signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
                         ) -> StopSignals:
    """Make SIGTERM and SIGINT set ``stop`` instead of killing the process.

    Call it from the main thread, before the slow start-up, so a stop during
    start-up is not lost. The live loop checks ``stop.is_set()`` once per
    frame, fades out and returns; the caller then sends STOPPING=1, stops the
    watchdog and closes the camera and sink. ``deadline_s``: if the process is
    still running this long after the first signal (a read stuck in a driver),
    log every thread's stack to stderr and exit with status 1. A second SIGINT
    raises KeyboardInterrupt, for a person pressing Ctrl-C twice.
    """
    handle = StopSignals(stop, tuple(signals), deadline_s)
    handle._install()
    return handle


# ---- logging to the journal ---------------------------------------------------

def _priority(level: int) -> int:
    """syslog priority of a logging level (crit 2, err 3, warning 4, info 6, debug 7)."""
    for threshold, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3),
                                (logging.WARNING, 4), (logging.INFO, 6)):
        if level >= threshold:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority ("<4>") so journald files it at the
    right level and ``journalctl -p warning`` finds the warnings. Tracebacks stay
    in the same entry's lines, each with the same prefix."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal() -> bool:
    """True when stderr is a journald stream ($JOURNAL_STREAM names its device:inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False
