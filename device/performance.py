"""The performance: what the box runs, unattended, from power-on to power cut.

Brings the parts up in order (model, sound output, camera, buttons), plays, and
takes them down again within the stop deadline. Around the music it keeps the
promises a gallery relies on:

- under systemd, a Pi camera or sound card that is absent at start is tried
  again with a growing wait, and systemd is told why the box is not ready yet
  (and given more time); run by hand, either is reported at once;
- under systemd, a configured model that cannot be played is replaced by the
  factory model, and the status line says why;
- a sound card that vanishes is reopened (never swapped for a file) while the
  camera and model go on; until sound has flowed again for a moment the status
  says so and the watchdog is not fed;
- the model button steps through the bundles in the models folder; a new model is
  loaded off the audio thread and crossfaded in; bad ones are skipped with one
  line each and the playing one kept;
- the record button starts and stops a take through the recorder hook, with the
  status light blinking while it records; a long press deletes the last take;
- the control channel (``device.control``, ``python -m device ctl``) asks for
  the same actions as the buttons, carried out the same way, and a few more
  (volume, sensitivity, a voice by name);
- with ``osc.send_to`` set, each frame's motion is handed to the OSC service,
  and with ``web.listen`` set, the motion and now and then the camera's picture
  to the web service (``device.publish``), never waiting for either;
- systemd hears READY once sound flows, WATCHDOG only while frames arrive and
  audio is written, and a STATUS line a technician can read.

Everything here runs in the model thread except the button callbacks (gpiozero's
threads) and the control channel's, which only post to a queue (and the
channel waits for the answer).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from device.audio import open_configured_sink, resolve_output
from device.audio.stream import AudioStream
from device.audio.wav import WavSink
from device.bundle import Bundle, check_compatible, read_bundle
from device.camera import Camera, Frame, open_camera
from device.config import DeviceConfig, resolve_path
from device.control import TIMEOUT_S, ControlError, ControlServer
from device.engine import Engine, RunStats
from device.runtime import probe_graph
from device.errors import AudioError, BundleError, CameraError, ControlsError, DanceSamplerError
from device.publish import (PICTURES_PER_S, FramePublisher, midi_socket_path,
                            socket_path as frames_socket_path, web_socket_path)
from device.service import HealthWatchdog, Notifier, status_line
from device.session import last_session, sanitize_label

log = logging.getLogger(__name__)

_SOUND_RETRY_S = 1.0
_SOUND_CONFIRM_S = 0.25   # sound written without an error before it counts as flowing
_FIRST_RETRY_S = 1.0
FACTORY_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "default.dsb"
"""The release's own factory model: what plays when the configured one cannot."""
_STATUS_WINDOW = 300  # frames whose compute time the status line summarises


class Recorder(Protocol):
    """Where the record button's takes go (the take itself: frames and sound)."""

    recording: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def delete_last(self) -> None: ...

    def frame(self, frame: Frame) -> None:
        """Called with every camera frame; must not block (cheap when not recording)."""

    def playback(self, generated_hop: np.ndarray) -> np.ndarray:
        """Called once per frame before the hop is played; returns what to play
        (in track mode, the track instead of the generated sound)."""

    def close(self, timeout: float = 2.0) -> None: ...


def load_bundle(path: str | Path, cfg: DeviceConfig) -> Bundle:
    """Read a bundle and refuse it unless it was made for this device's settings and
    its graph runs (tried first in a child process, which a crash takes down)."""
    bundle = read_bundle(resolve_path(str(path)))
    check_compatible(bundle.manifest, fps=cfg.camera.fps, motiongram=cfg.motiongram,
                     sample_rate=cfg.audio.sample_rate, where=str(bundle.path))
    if bundle.has_graph:   # a corpus or notes voice is numpy alone, no graph
        probe_graph(bundle.performer, runtime=cfg.model.runtime, where=str(bundle.path),
                    audio=bundle.manifest.audio,
                    latent_size=bundle.manifest.latent_output_size)
    return bundle


class Performance:
    """One show: model, sound output, camera, buttons and systemd health together."""

    def __init__(self, cfg: DeviceConfig, *, notifier: Notifier | None = None,
                 recorder: Recorder | None = None, pin_factory=None,
                 control: Path | None = None, frames: Path | None = None,
                 web_frames: Path | None = None, midi_frames: Path | None = None):
        self.cfg = cfg
        self.notifier = notifier or Notifier.from_environment()
        self.recorder = recorder
        self._label = recorder.label if recorder is not None else None   # the default label
        self._pin_factory = pin_factory
        self._control_path = control
        self._frames_path = frames   # where the OSC service takes frames (osc.send_to)
        self.control: ControlServer | None = None
        self.publisher: FramePublisher | None = None
        self._web_frames_path = web_frames   # where the web service takes frames (web.listen)
        self.web_publisher: FramePublisher | None = None
        self._midi_frames_path = midi_frames   # where the MIDI service takes frames (midi.enabled)
        self.midi_publisher: FramePublisher | None = None
        self._picture: np.ndarray | None = None   # the newest camera frame, for the web page
        self._volume = cfg.audio.volume   # the master volume; `ctl volume` changes it
        # (action, its _Request or None): from the buttons and the control channel.
        self._events: queue.SimpleQueue[tuple[str, _Request | None]] = queue.SimpleQueue()
        self._prepared: queue.SimpleQueue = queue.SimpleQueue()
        self._loading = threading.Lock()
        self.engine: Engine | None = None
        self.camera: Camera | None = None
        self.sink = None
        self.stream: AudioStream | None = None
        self.controls = None
        self.health: HealthWatchdog | None = None
        self.max_frames: int | None = None
        self._light_recording = False
        self._output: str | None = None   # the sound output, decided once at start
        self._sound_retry_at = 0.0
        self._sound_problem: str | None = None   # why no sound reaches the output now
        self._model_note: str | None = None      # why the configured model is not playing
        self._status_at = 0.0

    # ---- bringing the parts up --------------------------------------------------

    def open(self, stop: threading.Event) -> bool:
        """Bring up model, sound and camera; False if ``stop`` came first."""
        cfg = self.cfg
        # Under systemd the box waits for what is missing at start; by hand, a
        # missing camera or card is a mistake to report at once.
        unattended = self.notifier.enabled
        self.notifier.status("starting: loading the model")
        self.engine = Engine.configured(self._first_bundle(), cfg, volume=1.0)
        self.notifier.status("starting: opening the sound output")
        self._output = resolve_output(cfg.audio.output, default_wav=resolve_path(cfg.audio.wav_path),
                                      card_only=unattended)
        self.sink = self._keep_trying(
            stop, "sound output", lambda: open_configured_sink(cfg.audio, output=self._output),
            retry=unattended and self._output.startswith("alsa"),
            most_s=cfg.service.sound_retry_max_s)
        if self.sink is None:
            return False
        self.notifier.status("starting: opening the camera")
        # Into a WAV file, a run with a known end goes as fast as it can; anything
        # heard live, or open-ended, keeps real time. Only the Pi camera is waited
        # for: a video file or the synthetic dancer either opens or is a mistake.
        paced = not (isinstance(self.sink, WavSink) and self.finite)
        self.camera = self._keep_trying(
            stop, "camera", lambda: open_camera(cfg.camera.source, fps=cfg.camera.fps,
                                                width=cfg.motiongram.frame_width,
                                                height=cfg.motiongram.frame_height,
                                                paced=paced, seed=cfg.camera.seed),
            retry=unattended and cfg.camera.source == "pi",
            most_s=cfg.service.camera_retry_max_s)
        return self.camera is not None

    def _first_bundle(self) -> Bundle:
        """The configured model; under systemd, the factory model and a note in the
        status when the configured one cannot be played (damaged, missing, made for
        other settings). Run by hand, that is an error to report."""
        configured = self.cfg.model.bundle
        try:
            return load_bundle(configured, self.cfg)
        except DanceSamplerError as exc:
            if not self.notifier.enabled or resolve_path(configured).resolve() == FACTORY_BUNDLE:
                raise
            log.error("model: %s; playing the factory model %s instead", exc, FACTORY_BUNDLE)
            self._model_note = f"configured model refused: {exc}"
            return load_bundle(FACTORY_BUNDLE, self.cfg)

    def _keep_trying(self, stop: threading.Event, what: str, open_it, *, retry: bool,
                     most_s: float):
        """``open_it()``; with ``retry``, a part not there yet (a CameraError or
        AudioError) is tried again, waiting longer each time up to ``most_s``, while
        systemd hears why and is asked for more start time. None if ``stop`` came first."""
        wait, attempt = _FIRST_RETRY_S, 0
        while not stop.is_set():
            try:
                return open_it()
            except (CameraError, AudioError) as exc:
                if not retry:
                    raise
                attempt += 1
                log.warning("%s: %s; trying again in %.0f s (attempt %d)", what, exc, wait, attempt)
                self.notifier.status(f"waiting for the {what}: {exc} "
                                     f"(attempt {attempt}, next in {wait:.0f} s)")
                # Not ready yet, but alive: ask systemd for more start time.
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int((wait + 30) * 1e6)}")
                stop.wait(wait)
                wait = min(wait * 2, most_s)
        return None

    def _start_controls(self) -> None:
        from device.controls import Controls

        try:
            self.controls = Controls(
                self.cfg.controls, pin_factory=self._pin_factory,
                on_record_toggle=lambda: self._events.put(("record-toggle", None)),
                on_record_delete_last=lambda: self._events.put(("delete-last", None)),
                on_next_model=lambda: self._events.put(("next-model", None)),
                on_voice_from_last_take=lambda: threading.Thread(
                    target=self._voice_from_last_take, name="voice-button",
                    daemon=True).start())
        except ControlsError as exc:
            # Buttons are a convenience; the music is the point. Play without them.
            log.warning("%s; playing without buttons", exc)
            self.controls = None
        if self._control_path is not None:
            try:
                self.control = ControlServer(self._control_path, self._act).start()
            except ControlError as exc:
                log.error("%s; playing without the control channel", exc)

    def _act(self, command: str, value: float | str | None = None) -> dict:
        """The control channel's thread: have the model thread carry ``command`` out,
        as it does a button's, and return the reply."""
        if command == "status":
            return {"ok": True, **self._state()}
        if command == "voice-from-last-take":
            return self._voice_from_last_take()
        if command == "voice":
            return self._voice(value)
        if command == "add-model":
            return self._add_model(Path(value))
        request = _Request(value)
        self._events.put((command, request))
        if not request.done.wait(TIMEOUT_S):
            return {"ok": False, "error": f"the box did not act within {TIMEOUT_S:g} s "
                                          "(no camera frames?)"}
        return request.reply

    def _light(self, state: str) -> None:
        if self.controls is not None:
            self.controls.set_state(state)

    # ---- the show ------------------------------------------------------------

    @property
    def finite(self) -> bool:
        """Whether the run ends by itself (a video file, or a frame limit)."""
        return self.max_frames is not None or self.cfg.camera.source.startswith("video:")

    def run(self, stop: threading.Event, *, max_frames: int | None = None,
            announce=None) -> RunStats | None:
        """Play until ``stop`` is set, the camera ends or ``max_frames`` have played.

        Into a WAV file with a known end the output is written directly, one hop per
        frame, sample-exact; everything else goes through the audio stream (its own
        thread, fades, limiter, volume). Returns None when stopped before playing.
        """
        self.max_frames = max_frames
        try:
            if not self.open(stop):
                return None
            self._start_controls()
            self._light("starting")
            exact = isinstance(self.sink, WavSink) and self.finite
            self.health = HealthWatchdog(self.notifier,
                                         interval_s=self.notifier.watchdog_interval_s,
                                         stall_s=self.cfg.service.stall_s).start()
            if exact:
                write = self._write_exact
            else:
                self._open_stream(self.sink)
                write = self._push
            if self.cfg.osc.send_to or self.cfg.web.listen or self.cfg.midi.enabled:
                write = self._publishing(write)
            self._light("playing")
            if announce is not None:
                announce(self)
            log.info("playing %s from %s to %s", self.engine.bundle.manifest.name,
                     self.camera.name, self.sink.name)
            return self.engine.run(self.camera, write, max_frames=max_frames, stop=stop,
                                   on_frame=self._on_frame)
        finally:
            self.close("stopping: asked to" if stop.is_set() else "stopping: the input ended")

    def _publishing(self, write):
        """``write``, then the frame's motion handed to the OSC service, the web
        service (with the camera's picture now and then) and the MIDI service, as the
        config asks."""
        width = self.cfg.motiongram.width
        publishers = []
        if self.cfg.osc.send_to:
            self.publisher = FramePublisher(self._frames_path or frames_socket_path())
            publishers.append(self.publisher)
            log.info("osc: handing each frame's motion to the OSC service at %s",
                     self.publisher.path)
        if self.cfg.web.listen:
            self.web_publisher = FramePublisher(
                self._web_frames_path or web_socket_path(),
                picture_every=max(1, round(self.cfg.camera.fps / PICTURES_PER_S)))
            publishers.append(self.web_publisher)
            log.info("web: handing each frame's motion and the picture to the web service "
                     "at %s", self.web_publisher.path)

        if self.cfg.midi.enabled:
            self.midi_publisher = FramePublisher(self._midi_frames_path or midi_socket_path())
            publishers.append(self.midi_publisher)
            log.info("midi: handing each frame's motion to the MIDI service at %s",
                     self.midi_publisher.path)

        def write_and_publish(hop: np.ndarray) -> None:
            write(hop)
            engine, take = self.engine, self.recorder and self.recorder.take_path
            manifest = engine.bundle.manifest
            state = {"model": manifest.name, "voice": manifest.voice,
                     "recording": self._recording, "take": take.name if take else None}
            latent = engine.latent()
            for publisher in publishers:
                publisher.frame(engine.motiongram.last, width, float(engine.gain.gain), hop,
                                state, self._picture, latent)
        return write_and_publish

    def _write_exact(self, hop: np.ndarray) -> None:
        if self.recorder is not None:
            hop = self.recorder.playback(hop)
        self.sink.write(hop)
        self.health.audio_fed()

    def _open_stream(self, sink) -> None:
        """Start the audio stream into ``sink``. Sound counts as flowing (for the
        watchdog, READY and the status) once blocks worth ``_SOUND_CONFIRM_S`` have
        been written without an error: an output that opens and then fails at
        once never reads as healthy."""
        written = 0

        def on_block():
            nonlocal written
            written += 1
            if written >= confirm:
                if self._sound_problem is not None:
                    self._sound_problem = None
                    log.info("audio: sound output is back (%s)", sink.name)
                self.health.audio_fed()

        self.stream = AudioStream.from_config(sink, self.cfg.audio, hop_samples=self.engine.hop,
                                              on_block=on_block)
        self.stream.set_volume(self._volume)
        confirm = max(1, round(_SOUND_CONFIRM_S * sink.sample_rate / self.stream.block_samples))
        self.stream.start()

    def _push(self, hop: np.ndarray) -> None:
        if self.recorder is not None:
            hop = self.recorder.playback(hop)
        if self.stream is None:
            self._reopen_sound()
            return
        try:
            self.stream.push(hop)
        except AudioError as exc:
            log.error("audio: %s; reopening the sound output", exc)
            self._sound_problem = f"sound output lost ({exc})"
            self.notifier.status(f"no sound: {self._sound_problem}; reopening")
            self._light("error")
            self.stream = None
            self._sound_retry_at = time.monotonic() + _SOUND_RETRY_S

    def _reopen_sound(self) -> None:
        """Try once (at most every second) to get the same sound output back: the
        output decided at start, so a lost card is waited for, never swapped for a
        file. Its light and status come back once sound flows again."""
        if time.monotonic() < self._sound_retry_at:
            return
        self._sound_retry_at = time.monotonic() + _SOUND_RETRY_S
        try:
            self.sink = open_configured_sink(self.cfg.audio, output=self._output)
        except AudioError as exc:
            if self._sound_problem != f"no sound output ({exc})":
                log.warning("audio: still no sound output: %s", exc)
            self._sound_problem = f"no sound output ({exc})"
            return
        self._open_stream(self.sink)
        self._light("recording" if self._recording else "playing")
        log.info("audio: reopened %s", self.sink.name)

    @property
    def _recording(self) -> bool:
        return bool(self.recorder is not None and self.recorder.recording)

    def _on_frame(self, frame: Frame) -> None:
        self.health.frame_arrived()
        self._picture = frame.image
        while True:
            try:
                action, request = self._events.get_nowait()
            except queue.Empty:
                break
            reply = self._handle(action, request.value if request is not None else None)
            if request is not None:
                request.reply = reply
                request.done.set()
        try:
            self.engine.swap(self._prepared.get_nowait())
        except queue.Empty:
            pass
        if self.recorder is not None:
            self.recorder.frame(frame)   # every frame keeps the camera clock warm; cheap when idle
        if self._recording != self._light_recording:   # includes a take that ended by itself
            self._light_recording = self._recording
            self._light("recording" if self._light_recording else "playing")
        now = time.monotonic()
        if now >= self._status_at:
            self._status_at = now + self.cfg.service.status_every_s
            self.health.status(self.status_text())

    def status_text(self) -> str:
        """The STATUS line: what plays and how, or why nothing is heard."""
        if self._sound_problem is not None:
            return f"no sound: {self._sound_problem}; reopening"
        ms = list(self.engine.stats.compute_ms)[-_STATUS_WINDOW:]
        underruns = self.stream.stats.underruns if self.stream is not None else None
        manifest = self.engine.bundle.manifest
        line = status_line(manifest.name, voice=manifest.voice, fps=self.cfg.camera.fps,
                           compute_ms=float(np.median(ms)) if ms else 0.0,
                           underruns=underruns, state=self._state_name(),
                           still_s=self._still_s() if self.engine.quiet.quiet else None)
        return line if self._model_note is None else f"{line}; {self._model_note}"

    def _still_s(self) -> float:
        """Seconds since the camera last saw motion."""
        return self.engine.quiet.still_frames / self.engine.bundle.manifest.fps

    def _state_name(self) -> str:
        if self._sound_problem is not None:
            return "no sound"
        return "recording" if self._recording else "playing"

    def _state(self) -> dict:
        if self.engine is None:
            return {"state": "starting"}
        manifest = self.engine.bundle.manifest
        ms = list(self.engine.stats.compute_ms)[-_STATUS_WINDOW:]
        return {"state": self._state_name(), "model": manifest.name, "voice": manifest.voice,
                "status": self.status_text(), "volume": self._volume,
                "sensitivity": self.engine.gain.sensitivity,
                "dynamics": self.engine.dynamics.depth,
                "strike": self.engine.strikes.strike,
                "still_s": round(self._still_s(), 1), "quiet": self.engine.quiet.quiet,
                "compute_ms": round(float(np.median(ms)), 3) if ms else None,
                "underruns": self.stream.stats.underruns if self.stream is not None else None}

    def _handle(self, action: str, value: float | None = None) -> dict:
        """Carry out one action, from a button or the control channel; the reply."""
        if action == "next-model":
            threading.Thread(target=self._load_next_model, name="model-loader",
                             daemon=True).start()
            return {"ok": True, **self._state(), "note": "loading the next model"}
        if action == "volume":
            self._volume = value   # a stream reopened after a lost card starts there
            if self.stream is not None:
                self.stream.set_volume(value)   # glides there in the audio thread
            elif isinstance(self.sink, WavSink) and self.finite:
                return {"ok": True, **self._state(), "note": "a sample-exact file run has "
                                                             "no master volume"}
            return {"ok": True, **self._state()}
        if action == "sensitivity":
            self.engine.gain.set_sensitivity(value)
            return {"ok": True, **self._state()}
        if action == "dynamics":
            self.engine.dynamics.depth = value   # from the next segment; the median is kept
            return {"ok": True, **self._state()}
        if action == "strike":
            self.engine.strikes.strike = value   # at once, a strike under way too
            return {"ok": True, **self._state()}
        if self.recorder is None:
            log.warning("controls: %s asked for, but this box has no recorder set up", action)
            return {"ok": False, "error": "this box has no recorder set up"}
        if action == "record-toggle":   # the record button: one press starts or stops
            action = "stop" if self.recorder.recording else "record"
        note = None
        if action == "record":
            if self.recorder.recording:
                note = "already recording"
            else:
                # A label asked for names this take only; the button's take the default.
                self.recorder.label = sanitize_label(value) if value else self._label
                self.recorder.start()   # the light follows in _on_frame, as it does for a
                                        # take that ends by itself
        elif action == "stop":
            if self.recorder.recording:
                self.recorder.stop()
            else:
                note = "not recording"
        elif action == "delete-last":
            self.recorder.delete_last()
        elif action == "delete-take":   # here, as delete-last: only this thread changes takes
            why = self.recorder.delete_take(value)
            if why is not None:
                return {"ok": False, **self._state(), "error": why}
        return {"ok": True, **self._state(), **({"note": note} if note else {})}

    def _voice(self, name: str) -> dict:
        """The control channel's thread: crossfade to the bundle ``name`` of the
        models folder, loaded and checked as the model button's next one is."""
        if self.engine is None:
            return {"ok": False, **self._state(), "error": "the box is still starting"}
        folder = resolve_path(self.cfg.model.models_dir)
        path = folder / f"{name}.dsb"
        if not path.is_file():
            there = ", ".join(sorted(p.stem for p in bundles_after(folder, path))) or "none"
            return {"ok": False, **self._state(),
                    "error": f"no voice {name!r} in {folder} (there: {there})"}
        if path.resolve() == self.engine.bundle.path.resolve():
            return {"ok": True, **self._state(), "note": f"already playing {name}"}
        if self._loading.locked():
            return {"ok": False, **self._state(),
                    "error": "another model is being loaded; try again in a moment"}
        threading.Thread(target=self._load_next_model, args=([path],), name="model-loader",
                         daemon=True).start()
        return {"ok": True, **self._state(), "note": f"loading {name}"}

    def _add_model(self, source: Path) -> dict:
        """The control channel's thread: the bundle at ``source`` checked as
        check-bundle checks it (``load_bundle``: its checksums, this box's
        settings, its graph run in a child), then copied into the models folder
        under its own name, never over a file there."""
        folder = resolve_path(self.cfg.model.models_dir)
        target = folder / source.name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.dsb", source.name):
            return {"ok": False, **self._state(), "error": f"{source.name!r} is not a bundle's "
                    "file name (letters, digits, '.', '_', '-', ending .dsb)"}
        if target.exists():
            return {"ok": False, **self._state(),
                    "error": f"{target} exists; a bundle is never replaced from here"}
        try:
            if source.is_symlink() or not source.is_file():
                raise BundleError(f"{source}: no such bundle file")
            load_bundle(source, self.cfg)
        except DanceSamplerError as exc:
            log.warning("model: refused %s: %s", source.name, exc)
            return {"ok": False, **self._state(), "error": f"refused: {exc}"}
        staged = folder / f".{source.name}.new"
        try:
            shutil.copyfile(source, staged)
            os.link(staged, target)   # fails if the name was taken meanwhile
        except FileExistsError:
            return {"ok": False, **self._state(),
                    "error": f"{target} exists; a bundle is never replaced from here"}
        except OSError as exc:
            return {"ok": False, **self._state(),
                    "error": f"cannot put {source.name} into {folder}: {exc.strerror or exc}"}
        finally:
            staged.unlink(missing_ok=True)
        log.info("model: added %s to %s", source.name, folder)
        return {"ok": True, **self._state(), "note": f"added {target.stem}"}

    def _load_next_model(self, candidates: list[Path] | None = None) -> None:
        """Off the audio thread: the first of ``candidates`` (default: the next
        bundles in the models folder's order) that loads, checks and runs; each
        bad one on the way is skipped with one line."""
        if not self._loading.acquire(blocking=False):
            return  # a load is under way; this press is absorbed
        try:
            folder = resolve_path(self.cfg.model.models_dir)
            if candidates is None:
                candidates = bundles_after(folder, self.engine.bundle.path)
            if not candidates:
                log.warning("model: no other bundles in %s", folder)
            for path in candidates:
                try:
                    prepared = self.engine.prepare(load_bundle(path, self.cfg))
                except DanceSamplerError as exc:
                    log.error("model: skipping %s", exc)
                except Exception as exc:  # noqa: BLE001 - one bad file must not end the loader
                    log.error("model: skipping %s: %s: %s", path, type(exc).__name__, exc)
                else:
                    self._model_note = None
                    self._prepared.put(prepared)
                    log.info("model: switching to %s (%s)", prepared[0].manifest.name, path)
                    return
            if candidates:
                log.error("model: none of the other %d bundle(s) in %s can be played; keeping %s",
                          len(candidates), folder, self.engine.bundle.manifest.name)
        finally:
            self._loading.release()

    def _voice_from_last_take(self) -> dict:
        """The model button's long press, or the control channel's request: a voice
        from the newest take, built and played by another thread. Never run on the
        model thread: finding the newest take reads every take's header."""
        if self.engine is None:
            return {"ok": False, **self._state(), "error": "the box is still starting"}
        if self.recorder is not None and self.recorder.recording:
            reply = {"ok": False, **self._state(), "error": "a take is being recorded; stop "
                                                              "it first"}
        else:
            take = last_session(self.recorder.root if self.recorder is not None
                                else resolve_path(self.cfg.recorder.sessions_dir))
            if take is None:
                reply = {"ok": False, **self._state(), "error": "there is no take yet"}
            else:
                threading.Thread(target=self._voice_from, args=(take,), name="voice-builder",
                                 daemon=True).start()
                return {"ok": True, **self._state(),
                        "note": f"building a voice from {take.name}"}
        log.warning("voice: %s", reply["error"])
        return reply

    def _voice_from(self, take: Path) -> None:
        """Off the audio thread: a corpus voice from ``take`` in the models folder
        (the one already built from it, if there is one), then play it."""
        from device.corpus import VoiceShape, build_in_child, voice_file

        with self._loading:
            path = resolve_path(self.cfg.model.models_dir) / voice_file(take)
            started = time.monotonic()
            try:
                if not path.exists():
                    build_in_child([take], VoiceShape.of(self.engine.bundle.manifest),
                                   self.cfg.corpus, name=path.stem, out=path)
                    log.info("voice: built %s from %s in %.1f s", path.name, take.name,
                             time.monotonic() - started)
                prepared = self.engine.prepare(load_bundle(path, self.cfg))
            except DanceSamplerError as exc:
                log.error("voice: no voice from %s: %s", take.name, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a bad take must not end the show
                log.error("voice: no voice from %s: %s: %s", take.name, type(exc).__name__, exc)
                return
            self._model_note = None
            self._prepared.put(prepared)
            log.info("voice: switching to %s", path.name)

    # ---- taking it down --------------------------------------------------------

    def close(self, reason: str = "stopping") -> None:
        """Fade out and release everything; each part is closed even if another fails."""
        self.notifier.stopping(reason)
        for name, part, method in (("control channel", self.control, "close"),
                                   ("OSC publisher", self.publisher, "close"),
                                   ("web publisher", self.web_publisher, "close"),
                                   ("MIDI publisher", self.midi_publisher, "close"),
                                   ("recorder", self.recorder, "close"),
                                   ("audio", self.stream, "stop"),
                                   ("sound output", None if self.stream else self.sink, "close"),
                                   ("camera", self.camera, "close"),
                                   ("controls", self.controls, "close"),
                                   ("watchdog", self.health, "stop")):
            if part is None:
                continue
            try:
                getattr(part, method)()
            except Exception as exc:  # noqa: BLE001 - report it, close the rest
                log.error("stopping the %s failed: %s", name, exc)
        self.stream = self.camera = self.controls = self.health = self.control = None
        self.publisher = self.web_publisher = self.midi_publisher = None


class _Request:
    """A control channel's action (and its value) waiting for the model thread's reply."""

    def __init__(self, value: float | str | None = None):
        self.value = value
        self.done = threading.Event()
        self.reply: dict = {}


def bundles_after(folder: Path, current: Path) -> list[Path]:
    """The other bundles in ``folder``, in the order the model button reaches them:
    by name, starting after ``current``'s and wrapping round."""
    try:
        bundles = sorted(p for p in folder.glob("*.dsb") if p.is_file())
    except OSError as exc:
        log.error("model: cannot list %s: %s", folder, exc)
        return []
    others = [p for p in bundles if p.resolve() != current.resolve()]
    later = [p for p in others if p.name > current.name]
    return later + [p for p in others if p.name <= current.name]
