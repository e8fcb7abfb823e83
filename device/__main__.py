"""``python -m device``: the box's own commands.

Subcommands import what they need when they run, so ``check-bundle`` never opens
a camera and nothing here loads TensorFlow. Errors meant for people print one line
to stderr and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("device")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="device config file (default: config/device.yaml, "
                                         "or $DANCESAMPLER_CONFIG)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    # The same two options after the command too (`python -m device run --config X`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="device config file (as before the command)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = commands.add_parser
    commands.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)

    run = commands.add_parser("run", help="perform: camera in, generated sound out")
    run.add_argument("--camera", help="auto, pi, synthetic or video:PATH (default: from config)")
    run.add_argument("--audio", help="auto, alsa, alsa:DEVICE or wav:PATH (default: from config)")
    run.add_argument("--bundle", help="model bundle to play (default: from config)")
    run.add_argument("--seconds", type=float, help="stop after this many seconds of frames")
    run.set_defaults(func=_run)

    check = commands.add_parser("check-bundle", help="validate a bundle and run a test inference")
    check.add_argument("bundle", nargs="?", help="bundle file (default: the configured one)")
    check.set_defaults(func=_check_bundle)

    record = commands.add_parser("record",
                                 help="record one take: camera frames and the sound danced to")
    record.add_argument("--camera", help="auto, pi, synthetic or video:PATH (default: from config)")
    record.add_argument("--audio-in", dest="audio_in",
                        help="alsa, alsa:DEVICE, wav:PATH or track:PATH "
                             "(default: recorder.audio_in)")
    record.add_argument("--label", help="name of the take (default: take)")
    record.add_argument("--out", help="folder for the take (default: recorder.sessions_dir)")
    record.add_argument("--seconds", type=float,
                        help="stop after this many seconds of frames (default: Ctrl-C, "
                             "SIGTERM, the camera's end or the track's end)")
    record.set_defaults(func=_record)

    sessions = commands.add_parser("sessions", help="list the recorded takes")
    sessions.add_argument("root", nargs="?",
                          help="folder of takes (default: recorder.sessions_dir)")
    sessions.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    sessions.set_defaults(func=_sessions)

    ctl = commands.add_parser("ctl", help="ask the running box to act, as its buttons do",
                              description="Send one command to the box running here over its "
                                          "control channel (docs/control.md).")
    ctl.add_argument("action", choices=("record", "stop", "delete-last", "next-model",
                                        "voice-from-last-take", "status", "volume",
                                        "sensitivity", "dynamics", "strike", "voice",
                                        "delete-take", "add-model"),
                     help="record [LABEL]: start a take; stop: end it; delete-last: delete the last "
                          "take; next-model: play the next bundle; voice-from-last-take: "
                          "build a corpus voice from the newest take and play it; status: "
                          "what it is doing; volume V: master volume, 0 to 1; sensitivity "
                          "S: motion sensitivity, 0.05 to 20; dynamics D: how far the level "
                          "swings with the dance, 0 to 1; strike S: how loud a model's "
                          "sound is struck where the dancer stops, 0 to 4; voice NAME: "
                          "play the bundle NAME.dsb of the models folder; delete-take NAME: "
                          "delete the take folder NAME; add-model PATH: check the bundle at "
                          "PATH and copy it into the models folder")
    ctl.add_argument("value", nargs="?", help="for record (a label), volume, sensitivity, "
                                              "dynamics, strike, voice, delete-take and "
                                              "add-model")
    ctl.add_argument("--json", action="store_true", help="print the box's reply as JSON")
    ctl.add_argument("--socket", help="the box's control socket (default: "
                                      "$RUNTIME_DIRECTORY/control.sock, /run/dancesampler/"
                                      "control.sock, or out/control.sock in the checkout)")
    ctl.set_defaults(func=_ctl)

    osc = commands.add_parser(
        "osc", help="the OSC service: each frame's motion out, commands in (docs/osc.md)",
        description="Send the running box's motion as OSC to osc.send_to and take OSC "
                    "commands on osc.listen (docs/osc.md); exits at once when both are empty.")
    osc.add_argument("--socket", help="the box's control socket (default: as for ctl)")
    osc.add_argument("--frames", help="the socket the box's frames arrive on (default: "
                                      "/run/dancesampler-osc/frames.sock under systemd or "
                                      "where that folder exists, else out/frames.sock)")
    osc.set_defaults(func=_osc)

    midi = commands.add_parser(
        "midi", help="the MIDI service: notes and controllers from the dance (docs/midi.md)",
        description="Make the running box a MIDI source on the ALSA sequencer: controllers "
                    "from each frame's motion and the notes voice's notes (docs/midi.md); "
                    "exits at once when midi.enabled is false.")
    midi.add_argument("--frames", help="the socket the box's frames arrive on (default: "
                                       "/run/dancesampler-midi/frames.sock under systemd or "
                                       "where that folder exists, else out/midi-frames.sock)")
    midi.set_defaults(func=_midi)

    web = commands.add_parser(
        "web", help="the technician's page: picture, meters, controls, takes (docs/web.md)",
        description="Serve the running box's page on web.listen (docs/web.md); exits at "
                    "once when it is empty.")
    web.add_argument("--socket", help="the box's control socket (default: as for ctl)")
    web.add_argument("--frames", help="the socket the box's frames arrive on (default: "
                                      "/run/dancesampler-web/frames.sock under systemd or "
                                      "where that folder exists, else out/web-frames.sock)")
    web.add_argument("--password-file", dest="password_file",
                     help="the password's hash (default: systemd's credential web-password, "
                          "else /etc/dancesampler/web-password, else out/web-password)")
    web.set_defaults(func=_web)

    web_password = commands.add_parser(
        "web-password", help="set the page's password: its salted hash into a file",
        description="Read a password (typed twice, or one line on stdin) and write its "
                    "PBKDF2-SHA256 hash, which the page's service checks logins against.")
    web_password.add_argument("--out", help="where (default: out/web-password in the "
                                            "checkout; the box's is /etc/dancesampler/"
                                            "web-password, root's only)")
    web_password.set_defaults(func=_web_password)

    corpus = commands.add_parser(
        "corpus", help="a corpus voice: grains of takes, chosen live by the dancer's motion")
    corpus.add_argument("takes", nargs="+", metavar="TAKE", help="take folders")
    corpus.add_argument("--out", help="the bundle to write (default: model.models_dir/"
                                      "voice-<last take>.dsb)")
    corpus.add_argument("--name", help="the voice's name (default: the file's stem)")
    corpus.add_argument("--like", metavar="BUNDLE",
                        help="the bundle whose window, segment and motion gain the voice "
                             "shares, so the model button can crossfade between them "
                             "(default: model.bundle)")
    corpus.set_defaults(func=_corpus)

    notes = commands.add_parser(
        "notes", help="a notes voice: the dance as notes of the C major pentatonic scale, "
                      "no training (docs/notes.md)")
    notes.add_argument("--out", required=True, help="the bundle to write")
    notes.add_argument("--method", choices=("motion", "heuristic"), default="motion",
                       help="motion: notes at the dancer's stops, pitch from the height of "
                            "the motion, loudness from its amount (default); heuristic: the "
                            "baseline, a note on a fixed grid while moving")
    notes.add_argument("--name", help="the voice's name (default: the file's stem)")
    notes.add_argument("--like", metavar="BUNDLE",
                       help="the bundle whose window, segment and motion gain the voice "
                            "shares (default: model.bundle)")
    notes.set_defaults(func=_notes)

    bench = commands.add_parser("bench", help="measure each stage's share of the delay "
                                              "from a move to its sound")
    bench.add_argument("--bundle", help="model bundle (default: from config)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--frames", type=int, default=3000, help="frames to time (default 3000)")
    bench.add_argument("--play", type=float, metavar="SECONDS",
                       help="also play this long in real time through the configured output")
    bench.add_argument("--fps", type=int, help="frame rate for --play (default: the camera's)")
    bench.add_argument("--corpus-seconds", type=float, dest="corpus_seconds", metavar="SECONDS",
                       help="time a corpus voice of this many seconds of synthetic takes "
                            "(with the bundle's window and gain) instead of the bundle")
    bench.add_argument("--busy", action="store_true",
                       help="keep another core busy during --play")
    bench.add_argument("--pace", action="store_true",
                       help="keep --play to the system clock (an ALSA device with no clock of "
                            "its own, such as a file PCM over null)")
    bench.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    from device.cli import dispatch

    return dispatch(args)


def _config(args):
    from device.config import load_device_config, with_overrides

    cfg = load_device_config(args.config)
    overrides = {key: value for key, value in (
        ("camera.source", getattr(args, "camera", None)),
        ("audio.output", getattr(args, "audio", None)),
        ("model.bundle", getattr(args, "bundle", None))) if value is not None}
    return with_overrides(cfg, overrides) if overrides else cfg


def _load_bundle(cfg):
    from device.performance import load_bundle

    return load_bundle(cfg.model.bundle, cfg)


def _run(args) -> int:
    import threading

    from device.performance import Performance
    from device.service import install_stop_signals

    from device.errors import ConfigError

    cfg = _config(args)
    if args.seconds is not None and not args.seconds > 0:
        raise ConfigError(f"--seconds must be above 0, not {args.seconds:g}")
    stop = threading.Event()
    # SIGTERM (systemctl stop) and Ctrl-C end the loop; past the deadline the
    # process leaves anyway, so a stop never hangs the box.
    signals = install_stop_signals(stop, deadline_s=3.0)
    from device.errors import DanceSamplerError
    from device.recorder import TakeRecorder

    performance = None
    try:
        recorder = TakeRecorder.from_config(
            cfg, stream=lambda: performance.stream if performance is not None else None)
    except DanceSamplerError as exc:   # e.g. a missing track: play on, without the record button
        log.error("record button disabled: %s", exc)
        recorder = None
    else:
        from device.session import remove_headless

        # Takes cut off in their first milliseconds (a power cut as one started)
        # hold no header and nothing worth keeping.
        remove_headless(recorder.root)
    from device.control import socket_path

    performance = Performance(cfg, recorder=recorder, control=socket_path())
    max_frames = max(1, round(args.seconds * cfg.camera.fps)) if args.seconds else None
    try:
        stats = performance.run(stop, max_frames=max_frames,
                                announce=lambda p: print(
                                    f"camera: {p.camera.name}\naudio:  {p.sink.name}\n"
                                    f"model:  {p.engine.bundle.manifest.name} "
                                    f"({p.engine.bundle.path}, {p.engine.performer.runtime})",
                                    flush=True))
    finally:
        if signals.received is None:
            signals.restore()
    if stats is not None:
        print(f"played {stats.summary(cfg.audio.sample_rate)}")
    from device.audio.wav import WavSink

    if isinstance(performance.sink, WavSink):
        print(f"wrote {performance.sink.path}")
    return 0


def _record(args) -> int:
    """Record one take from the camera and ``--audio-in`` and say what was recorded."""
    import threading
    from pathlib import Path

    from device.audio import open_configured_sink
    from device.audio.stream import AudioStream
    from device.camera import open_camera
    from device.config import resolve_path
    from device.errors import ConfigError, SessionError
    from device.recorder import PeriodSink, TakeRecorder, record_from
    from device.service import install_stop_signals

    cfg = _config(args)
    if args.seconds is not None and not args.seconds > 0:
        raise ConfigError(f"--seconds must be above 0, not {args.seconds:g}")
    stop = threading.Event()
    signals = install_stop_signals(stop, deadline_s=5.0)
    camera = stream = None
    try:
        recorder = TakeRecorder.from_config(
            cfg, audio_in=args.audio_in, label=args.label,
            root=Path(args.out) if args.out else resolve_path(cfg.recorder.sessions_dir),
            stream=lambda: stream)
        camera = open_camera(cfg.camera.source, fps=cfg.camera.fps,
                             width=cfg.motiongram.frame_width,
                             height=cfg.motiongram.frame_height,
                             paced=True, seed=cfg.camera.seed)
        if recorder.kind == "track":
            sink = open_configured_sink(cfg.audio)
            if getattr(sink, "period_size", None) is None:
                sink = PeriodSink(sink, cfg.audio.period_size)
            stream = AudioStream.from_config(sink, cfg.audio, hop_samples=recorder.hop)
        recorder.start(wait=True)
        print(f"recording {recorder.take_path} from {camera.name} with {recorder.audio_source}"
              f"{'' if args.seconds else '; Ctrl-C stops'}", flush=True)
        max_frames = round(args.seconds * cfg.camera.fps) if args.seconds else None
        info = record_from(camera, recorder, stop=stop, max_frames=max_frames, stream=stream)
    finally:
        if camera is not None:
            camera.close()
        if stream is not None:
            stream.stop()
        if signals.received is None:
            signals.restore()
    if info is None:
        raise SessionError(f"{recorder.take_path}: the take could not be closed")
    print(f"take:     {info.path}\nlabel:    {info.label}\n"
          f"duration: {info.duration_s:.2f} s ({info.frames} frames, "
          f"{recorder.dropped_frames} dropped)\n"
          f"audio:    {info.audio_s:.2f} s ({info.audio_source})")
    if recorder.stopped_reason:
        print(f"ended:    {recorder.stopped_reason}")
    return 0


def _ctl(args) -> int:
    import json

    from device.control import (NUMBER_COMMANDS, VALUE_COMMANDS, ControlError, check_value,
                                request)

    value = args.value
    if args.action in NUMBER_COMMANDS and value is not None:
        try:
            value = float(value)
        except ValueError:
            pass   # check_value names what it takes
    if args.action in VALUE_COMMANDS and value is None:
        raise ControlError(f"{args.action} needs a value (python -m device ctl "
                           f"{args.action} VALUE)")
    check_value(args.action, value)
    reply = request(args.action, args.socket, value=value)
    if args.json:
        print(json.dumps(reply))
    if not reply.get("ok"):
        raise ControlError(f"the box refused {args.action}: {reply.get('error', 'no reason')}")
    if not args.json:
        note = f" ({reply['note']})" if reply.get("note") else ""
        print(f"{reply.get('status') or reply.get('state')}{note}")
    return 0


def _osc(args) -> int:
    from device.osc import serve

    return _beside(lambda cfg, stop: serve(cfg.osc, stop, frames=_path(args.frames),
                                           control_socket=_path(args.socket)), args)


def _midi(args) -> int:
    from device.midi import serve

    return _beside(lambda cfg, stop: serve(cfg.midi, stop, frames=_path(args.frames)), args)


def _web(args) -> int:
    from device.web import serve

    return _beside(lambda cfg, stop: serve(cfg, stop, frames=_path(args.frames),
                                           control_socket=_path(args.socket),
                                           password_file=_path(args.password_file)), args)


def _beside(serve, args) -> int:
    """Run a service beside the show (OSC, MIDI, the page): ``serve(cfg, stop)``
    until SIGTERM or SIGINT sets ``stop``."""
    import threading

    from device.service import install_stop_signals

    cfg = _config(args)
    stop = threading.Event()
    signals = install_stop_signals(stop, deadline_s=3.0)
    try:
        return serve(cfg, stop)
    finally:
        if signals.received is None:
            signals.restore()


def _path(value: str | None):
    """An optional path argument as a Path, or None."""
    from pathlib import Path

    return Path(value) if value else None


def _web_password(args) -> int:
    import getpass
    import os
    from pathlib import Path

    from device.config import PROJECT_ROOT
    from device.web import CREDENTIAL, WebError, hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password for the page: ")
        if getpass.getpass("again: ") != password:
            raise WebError("the two passwords differ; nothing written")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise WebError("the password must have at least 8 characters; nothing written")
    out = Path(args.out) if args.out else PROJECT_ROOT / "out" / CREDENTIAL
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hash_password(password) + "\n")
    print(f"wrote the hash of the page's password to {out}")
    return 0


def _sessions(args) -> int:
    """List the takes in ``args.root``, else in the config's ``recorder.sessions_dir``."""
    from pathlib import Path

    from device.config import resolve_path
    from device.errors import SessionError
    from device.session import sessions_command

    root = Path(args.root) if args.root else resolve_path(_config(args).recorder.sessions_dir)
    if args.root and not root.is_dir():
        raise SessionError(f"{root}: no such folder of takes")
    return sessions_command(root, as_json=args.json)


def _corpus(args) -> int:
    from pathlib import Path

    from device.config import resolve_path
    from device.corpus import VoiceShape, corpus_from_takes, voice_file
    from device.performance import load_bundle

    cfg = _config(args)
    like = load_bundle(args.like or cfg.model.bundle, cfg)
    out = Path(args.out) if args.out else resolve_path(cfg.model.models_dir) / voice_file(
        Path(args.takes[-1]))
    path = corpus_from_takes(args.takes, VoiceShape.of(like.manifest), cfg.corpus,
                             name=args.name or out.stem, out=out)
    print(f"wrote {path}")
    return 0


def _notes(args) -> int:
    from pathlib import Path

    from device.corpus import VoiceShape
    from device.notes import default_params, write_notes
    from device.performance import load_bundle

    cfg = _config(args)
    like = VoiceShape.of(load_bundle(args.like or cfg.model.bundle, cfg).manifest)
    out = Path(args.out)
    path = write_notes(like, default_params(like, args.method), name=args.name or out.stem,
                       out=out)
    print(f"wrote {path}")
    return 0


def _bench(args) -> int:
    from device import bench

    cfg = _config(args)
    bundle = _load_bundle(cfg)
    if args.corpus_seconds:
        bundle = bench.synthetic_corpus(bundle, cfg, args.corpus_seconds)
    return bench.main(args, cfg, bundle)


def _check_bundle(args) -> int:
    from device.engine import tried_voice

    cfg = _config(args)
    # load_bundle runs the graph in a child first: a graph that crashes the
    # runtime cannot crash this check.
    bundle = _load_bundle(cfg)
    performer = tried_voice(bundle, runtime=cfg.model.runtime)
    print(bundle.manifest.describe())
    print(f"ok: {bundle.path} is valid for this device; test inference in "
          f"{performer.runtime} gave {bundle.manifest.audio.segment_samples} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
