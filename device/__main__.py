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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="perform: camera in, generated sound out")
    run.add_argument("--camera", help="auto, pi, synthetic or video:PATH (default: from config)")
    run.add_argument("--audio", help="auto, alsa, alsa:DEVICE or wav:PATH (default: from config)")
    run.add_argument("--bundle", help="model bundle to play (default: from config)")
    run.add_argument("--seconds", type=float, help="stop after this many seconds of frames")
    run.set_defaults(func=_run)

    check = commands.add_parser("check-bundle", help="validate a bundle and run a test inference")
    check.add_argument("bundle", nargs="?", help="bundle file (default: the configured one)")
    check.set_defaults(func=_check_bundle)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from device.errors import DanceSamplerError

    try:
        return args.func(args)
    except DanceSamplerError as exc:
        if args.debug:
            raise
        print(f"dancesampler: error: {exc}", file=sys.stderr)
        return 1


def _config(args):
    from device.config import load_device_config, with_overrides

    cfg = load_device_config(args.config)
    overrides = {key: value for key, value in (
        ("camera.source", getattr(args, "camera", None)),
        ("audio.output", getattr(args, "audio", None)),
        ("model.bundle", getattr(args, "bundle", None))) if value is not None}
    return with_overrides(cfg, overrides) if overrides else cfg


def _load_bundle(cfg):
    from device.bundle import check_compatible, read_bundle
    from device.config import resolve_path

    bundle = read_bundle(resolve_path(cfg.model.bundle))
    check_compatible(bundle.manifest, fps=cfg.camera.fps, motiongram=cfg.motiongram,
                     sample_rate=cfg.audio.sample_rate, where=str(bundle.path))
    return bundle


def _run(args) -> int:
    from device.audio import open_sink
    from device.audio.wav import WavSink
    from device.camera import open_camera
    from device.config import resolve_path
    from device.engine import Engine

    cfg = _config(args)
    bundle = _load_bundle(cfg)
    engine = Engine(bundle, volume=cfg.audio.volume, runtime=cfg.model.runtime,
                    threads=cfg.model.threads)
    sink = open_sink(cfg.audio.output, sample_rate=cfg.audio.sample_rate,
                     period_size=cfg.audio.period_size, periods=cfg.audio.periods,
                     default_wav=resolve_path(cfg.audio.wav_path))
    try:
        # Into a WAV file, a run with a known end (a video file, --seconds) goes as
        # fast as it can; anything open-ended or heard live keeps real time.
        finite = args.seconds is not None or cfg.camera.source.startswith("video:")
        paced = not (isinstance(sink, WavSink) and finite)
        camera = open_camera(cfg.camera.source, fps=cfg.camera.fps, width=cfg.motiongram.width,
                             height=cfg.motiongram.height, paced=paced, seed=cfg.camera.seed)
    except BaseException:
        sink.close()
        raise
    print(f"camera: {camera.name}\naudio:  {sink.name}\nmodel:  {bundle.manifest.name} "
          f"({bundle.path}, {engine.performer.runtime})", flush=True)
    max_frames = round(args.seconds * cfg.camera.fps) if args.seconds else None
    try:
        stats = engine.run(camera, sink, max_frames=max_frames)
    except KeyboardInterrupt:
        stats = None
    finally:
        camera.close()
        sink.close()
    if stats is not None:
        print(f"played {stats.summary(cfg.audio.sample_rate)}")
    if isinstance(sink, WavSink):
        print(f"wrote {sink.path}")
    return 0


def _check_bundle(args) -> int:
    import numpy as np

    from device.runtime import Performer

    cfg = _config(args)
    bundle = _load_bundle(cfg)
    m = bundle.manifest
    performer = Performer(bundle.performer, runtime=cfg.model.runtime, threads=1,
                          where=str(bundle.path))
    out = performer(np.zeros((m.window_frames, m.motiongram.features), np.float32))
    if out.shape != (m.audio.segment_samples,) or not np.all(np.isfinite(out)):
        from device.errors import BundleError

        raise BundleError(f"{bundle.path}: test inference gave {out.shape}, expected "
                          f"({m.audio.segment_samples},) finite samples")
    print(m.describe())
    print(f"ok: {bundle.path} is valid for this device; test inference in "
          f"{performer.runtime} gave {len(out)} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
