"""``python -m device bench``: where the time between a move and its sound goes.

Two parts:

- **Compute**: the live loop's stages timed one by one, per frame, over synthetic
  dancer frames: capture (rendering the stand-in frame; the real camera's share is
  its frame period), motiongram, inference, then level dynamics, strikes and
  overlap-add. Median and 99th percentile, single-threaded inference, as the box
  runs it.
- **Structure**: the delays that are not compute: one camera frame (a move is
  seen when the frame that holds it is complete), the ALSA buffer and the jitter
  margin the audio stream keeps ahead of the card. End to end = structure +
  compute, at the config's frame rate and at 30 and 60 fps, beside the seed
  prototype's 200 ms (0.1 s model) and 700 ms (0.5 s model), which waited for a
  whole segment before generating.

``--play SECONDS`` then plays in real time through the configured sound output
(the audio thread, ring, limiter: everything but the camera), optionally with
another process keeping a core busy, and reports late frames, starved blocks,
dropped hops and ALSA underruns. Timings here are measurements for a report, not
assertions: the tests never time anything.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.bundle import Bundle
from device.camera.synthetic import SyntheticDancer
from device.config import DeviceConfig
from device.engine import Engine

log = logging.getLogger(__name__)

SEED_PROTOTYPE_MS = {"0.1 s model": 200.0, "0.5 s model": 700.0}
TARGETS = {"compute_median_ms": 3.0, "end_to_end_30fps_ms": 50.0, "end_to_end_60fps_ms": 30.0}
"""On this 2-core development machine, single-threaded inference."""


@dataclass
class Timing:
    median_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_s: list[float]) -> Timing:
        ms = np.asarray(samples_s) * 1000.0
        return cls(round(float(np.median(ms)), 3), round(float(np.percentile(ms, 99)), 3))


def measure_compute(engine: Engine, cfg: DeviceConfig, *, frames: int) -> dict[str, Timing]:
    """Each stage of ``engine``'s loop, timed per frame over ``frames`` synthetic frames."""
    dancer = SyntheticDancer(fps=cfg.camera.fps, width=cfg.motiongram.frame_width,
                             height=cfg.motiongram.frame_height, seed=cfg.camera.seed)
    stages: dict[str, list[float]] = {k: [] for k in
                                      ("capture", "motiongram", "inference", "overlap_add")}
    total = []
    clock = time.perf_counter
    for _ in range(frames):
        t0 = clock()
        image = dancer.read().image
        t1 = clock()
        window = engine.window.push(engine.gain.push(engine.motiongram.push(image)))
        t2 = clock()
        segment = engine.performer(window)
        t3 = clock()
        engine.overlap_add.push(engine.shaped(segment, window))
        t4 = clock()
        stages["capture"].append(t1 - t0)
        stages["motiongram"].append(t2 - t1)
        stages["inference"].append(t3 - t2)
        stages["overlap_add"].append(t4 - t3)
        total.append(t4 - t1)
    result = {name: Timing.of(values) for name, values in stages.items()}
    result["compute"] = Timing.of(total)   # what the box spends per frame: not the stand-in's render
    return result


# Frame rates reported besides the config's, each at a sample rate it divides
# (22050 Hz cannot carry 60 fps: 367.5 samples a frame).
_REPORTED_RATES = ((30, 22050), (60, 44100))


def structure_ms(cfg: DeviceConfig, fps: float, sample_rate: int) -> dict[str, float]:
    """The delays that are not compute, in ms, at ``fps`` and ``sample_rate``."""
    a = cfg.audio
    return {"camera_frame": round(1000.0 / fps, 2),
            "alsa_buffer": round(1000.0 * a.period_size * a.periods / sample_rate, 2),
            "jitter_margin": round(a.margin_ms, 2)}


def report(bundle: Bundle, cfg: DeviceConfig, *, frames: int) -> dict:
    engine = Engine.configured(bundle, cfg)
    compute = measure_compute(engine, cfg, frames=frames)
    # The runtime really loaded ('auto' names none): the figures are that runtime's.
    out = {"model": bundle.manifest.name, "runtime": engine.performer.runtime,
           "frames_measured": frames,
           "compute_ms": {k: vars(v) for k, v in compute.items()},
           "targets_ms": TARGETS, "seed_prototype_ms": SEED_PROTOTYPE_MS, "end_to_end_ms": {}}
    for fps, rate in sorted({(cfg.camera.fps, cfg.audio.sample_rate), *_REPORTED_RATES}):
        parts = structure_ms(cfg, fps, rate)
        fixed = sum(parts.values())
        out["end_to_end_ms"][f"{fps}fps_{rate}Hz"] = {
            "structure": parts,
            "median": round(fixed + compute["compute"].median_ms, 2),
            "p99": round(fixed + compute["compute"].p99_ms, 2)}
    return out


def synthetic_corpus(like: Bundle, cfg: DeviceConfig, seconds: float) -> Bundle:
    """A corpus voice of ``seconds`` of takes, in memory, with ``like``'s window and
    gain, for timing: ten minutes of the synthetic dancer's motion (repeated, with a
    little noise, up to ``seconds``) and noise for sound, kept as 8-bit mu-law (an
    hour of int16 would not fit a bundle). Its search costs what real takes' would."""
    from device.config import CorpusConfig
    from device.corpus import Piece, VoiceShape, build_corpus
    from device.motiongram import MotionGain, MotiongramStream

    shape = VoiceShape.of(like.manifest)
    dancer = SyntheticDancer(fps=shape.fps, width=shape.motiongram.frame_width,
                             height=shape.motiongram.frame_height, seed=cfg.camera.seed)
    stream = MotiongramStream(shape.motiongram)
    minute = round(60 * shape.fps)
    motion = np.stack([stream.push(dancer.read().image).copy()
                       for _ in range(min(10 * minute, round(seconds * shape.fps)))])
    motion = MotionGain(shape.motion_gain, shape.motiongram, fps=shape.fps).apply(motion)
    rng = np.random.default_rng(0)
    pieces, left, i = [], round(seconds * shape.fps), 0
    while left > 0:
        n = min(minute, left)
        start = (i * minute) % len(motion)
        part = np.resize(np.roll(motion, -start, axis=0), (n, motion.shape[1]))
        part = part * rng.uniform(0.9, 1.1, part.shape).astype(np.float32)
        audio = rng.normal(0, 0.1, n * shape.audio.hop_samples + shape.audio.segment_samples)
        pieces.append(Piece(f"minute{i}", "bench", part, audio.astype(np.float32)))
        left, i = left - n, i + 1
    manifest, members = build_corpus(
        pieces, shape, CorpusConfig(max_seconds=3600, sample_format="mulaw"),
        name=f"synthetic-corpus-{seconds:g}s")
    return Bundle(Path(manifest.name), manifest, members)


def _busy(stop_at: float) -> None:
    """Keep one core busy until ``stop_at`` (monotonic seconds)."""
    x = 0
    while time.monotonic() < stop_at:
        x = (x * 1103515245 + 12345) % 2147483648


def play(bundle: Bundle, cfg: DeviceConfig, *, seconds: float, busy: bool,
         fps: int | None = None, pace: bool | None = None) -> dict:
    """Real-time playback through the configured output; late frames and underruns.

    ``fps`` drives the loop at another frame rate than the model's (the sound
    card then runs at hop * fps), to measure load and timing at that rate.
    ``pace`` keeps the stream to the system clock, for an ALSA device with no
    clock of its own (a ``file`` PCM over ``null``)."""
    from device.audio import open_configured_sink
    from device.audio.stream import AudioStream

    fps = fps or cfg.camera.fps
    engine = Engine.configured(bundle, cfg)
    sink = open_configured_sink(cfg.audio, sample_rate=engine.hop * fps)
    stream = AudioStream.from_config(sink, cfg.audio, hop_samples=engine.hop, pace=pace)
    dancer = SyntheticDancer(fps=fps, seed=cfg.camera.seed, paced=True, seconds=seconds)
    helper = None
    if busy:
        helper = multiprocessing.Process(target=_busy, args=(time.monotonic() + seconds + 2,),
                                         daemon=True)
        helper.start()
    late = 0
    period = 1.0 / fps
    stream.start()
    try:
        started = time.monotonic()
        frames = 0
        while (frame := dancer.read()) is not None:
            stream.push(engine.step(frame.image, frame.repeat))
            frames += 1
            # Late: this frame's sound was pushed after the next frame was due.
            if time.monotonic() - started > (frames + 1) * period:
                late += 1
    finally:
        stream.stop()
        if helper is not None:
            helper.terminate()
    stats = stream.stats
    return {"seconds": seconds, "fps": fps, "sample_rate": engine.hop * fps,
            "output": sink.name, "other_core_busy": busy, "paced_by_system_clock": stream.pace, "frames": frames,
            "late_frames": late, "starved_blocks": stats.late_blocks,
            "dropped_hops": stats.dropped_hops, "alsa_underruns": stats.underruns,
            "note": ("the model's hop is played at this frame rate, so a model trained at "
                     "another rate sounds pitched; timing and load are those of the box")
            if fps != bundle.manifest.fps else ""}


def format_text(result: dict) -> str:
    c = result["compute_ms"]
    lines = [f"model {result['model']}, {result['frames_measured']} frames, "
             f"single-threaded inference ({result['runtime']})", "",
             "compute per frame        median     p99"]
    for stage in ("capture", "motiongram", "inference", "overlap_add", "compute"):
        label = {"capture": "capture (stand-in)", "compute": "total compute",
                 "overlap_add": "dynamics to output"}.get(stage, stage)
        lines.append(f"  {label:<22}{c[stage]['median_ms']:7.3f} ms {c[stage]['p99_ms']:7.3f} ms")
    lines += ["", "end to end, move to sound   median     p99    structure"]
    for rate, e in result["end_to_end_ms"].items():
        s = e["structure"]
        fps, hz = rate.split("_")
        lines.append(f"  at {fps[:-3]} fps, {hz[:-2]} Hz{'':<{13 - len(fps) - len(hz)}}{e['median']:6.1f} ms {e['p99']:6.1f} ms   "
                     f"frame {s['camera_frame']:.1f} + ALSA {s['alsa_buffer']:.1f} "
                     f"+ margin {s['jitter_margin']:.1f}")
    seed = result["seed_prototype_ms"]
    lines.append(f"  seed prototype               {seed['0.1 s model']:.0f} ms (0.1 s model), "
                 f"{seed['0.5 s model']:.0f} ms (0.5 s model)")
    t = result["targets_ms"]
    lines.append(f"  targets                      compute < {t['compute_median_ms']:g} ms; "
                 f"< {t['end_to_end_30fps_ms']:g} ms at 30 fps, "
                 f"< {t['end_to_end_60fps_ms']:g} ms at 60 fps")
    if "play" in result:
        p = result["play"]
        lines += ["", f"real-time playback, {p['seconds']:g} s at {p['fps']} fps into "
                      f"{p['output']}{' with the other core busy' if p['other_core_busy'] else ''}:",
                  f"  {p['frames']} frames, {p['late_frames']} late frames, "
                  f"{p['starved_blocks']} starved blocks, {p['dropped_hops']} dropped hops, "
                  f"{p['alsa_underruns']} ALSA underruns"]
        if p["note"]:
            lines.append(f"  ({p['note']})")
    return "\n".join(lines)


def main(args, cfg: DeviceConfig, bundle: Bundle) -> int:
    result = report(bundle, cfg, frames=args.frames)
    if args.play:
        result["play"] = play(bundle, cfg, seconds=args.play, busy=args.busy, fps=args.fps,
                              pace=args.pace or None)
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0
