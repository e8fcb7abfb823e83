"""``python -m train_host listen``: what a bundle plays, measured as a dancer hears it.

Two checks, each through the box's own engine (``device.engine.Engine``: the
motiongram at the bundle's frame size, the motion gain, the graph in the box's
runtime, overlap-add), so that two factory models, or one model at two motion
scales, can be compared on what a listener gets rather than on a training loss:

- **the unseen dance**: a synthetic dance no factory model trained on
  (``make_demo_take``, seed 1000 by default) and the sound the demo instrument makes
  for it; the pitch-class movement of the model's output against the instrument's
  (``movement_agreement``: correlation, and how much it moves), and both levels;
- **real videos**, read as the box reads a video camera (re-timed to the bundle's
  frame rate, repeated frames carrying their motion on): the median level of 0.5 s
  blocks, the share of blocks under -60 dBFS, and when the first sound comes; how
  far the pitch-class profile moves from block to block, and each block's strongest
  pitch class beside where across the picture the box saw the motion (the
  instrument picks its chord by where the dancer stands: is that heard on a real
  dancer?);
- **a still room**: the level the model plays once nothing has moved for a second,
  before the box fades it out (``motion.quiet_after_s``; ``QuietWhenStill``).

These are the figures docs/model.md compares factory models and motion scales by.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from device.bundle import read_bundle
from device.camera.video import VideoFileCamera
from device.engine import Engine
from device.osc import centroid
from train_host.demo_data import make_demo_take
from train_host.evaluate import (block_chroma, chroma_movement, chroma_steps, loudness_db,
                                 movement_agreement)

BLOCK_S = 0.5
SILENT_DB = -60.0
PITCH_CLASSES = ("A", "A#", "B", "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#")
"""Names of ``block_chroma``'s columns."""
UNSEEN_SEED = 1000
"""The factory model trains on demo seeds 7 to 16 (``config/train.yaml``)."""
VALIDATION_SEEDS = (2000, 2001, 2002)
"""Dances ``make default-model`` checks its rebuild on, which no reported figure uses."""
PITCH_TARGET = 0.5
"""The pitch-following targets: correlation, and movement as a share of the instrument's."""


def block_levels(audio: np.ndarray, sample_rate: int, block_s: float = BLOCK_S) -> np.ndarray:
    """RMS level in dBFS of each whole ``block_s`` block (``loudness_db``: floored at -80)."""
    n = int(round(block_s * sample_rate))
    count = len(audio) // n
    return loudness_db(audio[:count * n].reshape(count, n))


def _level_db(audio: np.ndarray) -> float:
    return float(loudness_db(audio))


def _play(engine: Engine, frames, seen: list | None = None) -> np.ndarray:
    """The engine's output for (image, repeat) pairs, one hop per frame; with
    ``seen``, what the box saw at each frame appended to it: whether it counted the
    room as moving (``device.engine.QuietWhenStill``: motion over the motion gain's
    floor), and where across the picture the motion was (``device.osc.centroid`` of
    its column means, 0 left to 1 right, as OSC and MIDI send it)."""
    hops = []
    width = engine.bundle.manifest.motiongram.width
    for image, repeat in frames:
        hops.append(engine.step(image, repeat).copy())
        if seen is not None:
            seen.append((engine.quiet.still_frames == 0,
                         centroid(engine.window.latest[:width])))
    return np.concatenate(hops)


def _blocks(values, fps: float, count: int) -> np.ndarray:
    """The first ``count`` whole ``BLOCK_S`` blocks of per-frame ``values``: (count, frames)."""
    n = int(round(BLOCK_S * fps))
    return np.asarray(values[:count * n], float).reshape(count, n)


def _pitch_by_place(played: np.ndarray, seen: list, rate: int, fps: float) -> dict:
    """How the pitch moves on a video: the mean ``chroma_movement`` of what was
    played, and, per strongest pitch class of a block, how many blocks and where
    across the picture their motion was (the mean centroid of their moving frames);
    ``place_share``: the share of the blocks' spread across the picture that their
    strongest pitch class accounts for (between-class over total variance; None
    with fewer than two classes), 0 where the chord ignores where the dancer is."""
    chroma = block_chroma(played, rate, BLOCK_S)
    movement = chroma_steps(chroma)
    count = min(len(chroma), len(seen) // int(round(BLOCK_S * fps)))
    moving = _blocks([m for m, _ in seen], fps, count) > 0
    across = np.where(moving, _blocks([a for _, a in seen], fps, count), 0.0)
    frames = moving.sum(axis=1)
    where = np.divide(across.sum(axis=1), frames, out=np.full(count, np.nan),
                      where=frames > 0)
    known = ~np.isnan(where) & ~np.isnan(chroma[:count]).any(axis=1)
    strongest = np.argmax(np.nan_to_num(chroma[:count]), axis=1)
    classes = {}
    for c in np.unique(strongest[known]):
        mine = known & (strongest == c)
        classes[PITCH_CLASSES[c]] = {"blocks": int(mine.sum()),
                                     "across": float(where[mine].mean())}
    share = None
    if len(classes) > 1:
        spread = float(where[known].var())
        between = sum(v["blocks"] * (v["across"] - where[known].mean()) ** 2
                      for v in classes.values()) / int(known.sum())
        share = between / spread if spread > 0 else None
    return {"chroma_movement": (float(np.nanmean(movement))
                                if not np.isnan(movement).all() else None),
            "strongest_pitch_classes": dict(sorted(classes.items(),
                                                   key=lambda kv: kv[1]["across"])),
            "place_share": share}


def _dance(bundle, seed: int, seconds: float, runtime: str):
    """The demo dance of ``seed`` (its take) and its figures through the box's engine."""
    m = bundle.manifest
    mg, rate = m.motiongram, m.audio.sample_rate
    take = make_demo_take(seconds, seed=seed, fps=m.fps, sample_rate=rate,
                          width=mg.frame_width, height=mg.frame_height)
    played = _play(Engine(bundle, runtime=runtime), ((f, False) for f in take.frames))
    instrument = chroma_movement(take.audio, rate)
    corr, ratio = movement_agreement(chroma_movement(played, rate), instrument)
    return take, {"seed": seed, "seconds": seconds, "chroma_movement_corr": corr,
                  "chroma_movement_ratio": ratio,
                  "instrument_chroma_movement": float(np.nanmean(instrument)),
                  "level_db": _level_db(played),
                  "instrument_level_db": _level_db(take.audio)}


def pitch_following(bundle_path: str | Path, seeds=VALIDATION_SEEDS, *,
                    seconds: float = 60.0) -> tuple[float, float]:
    """The pitch-class movement corr and ratio against the demo instrument, each the
    mean over the dances of ``seeds``, in tflite_runtime."""
    bundle = read_bundle(bundle_path)
    figures = [_dance(bundle, seed, seconds, "tflite_runtime")[1] for seed in seeds]
    return (float(np.mean([f["chroma_movement_corr"] for f in figures])),
            float(np.mean([f["chroma_movement_ratio"] for f in figures])))


def listen(bundle_path: str | Path, videos: list[str | Path], *, seconds: float = 60.0,
           seed: int = UNSEEN_SEED, runtime: str = "tflite_runtime") -> dict:
    """The figures for one bundle: ``{"scale", "runtime", "dance": {...}, "videos": {...}}``."""
    bundle = read_bundle(bundle_path)
    m = bundle.manifest
    take, dance = _dance(bundle, seed, seconds, runtime)
    # The dance's first picture held for two seconds: after one, nothing in the
    # window has moved.
    still = _play(Engine(bundle, runtime=runtime),
                  ((take.frames[0], False) for _ in range(round(2 * m.fps))))
    result = {"scale": m.motiongram.scale, "runtime": runtime,
              "still_level_db": _level_db(still[len(still) // 2:]), "dance": dance,
              "videos": {}}
    mg, rate = m.motiongram, m.audio.sample_rate
    for video in videos:
        camera = VideoFileCamera(video, fps=m.fps, width=mg.frame_width, height=mg.frame_height)
        seen = []
        try:
            frames = iter(lambda: camera.read(), None)
            played = _play(Engine(bundle, runtime=runtime),
                           ((f.image, f.repeat) for f in frames), seen)
        finally:
            camera.close()
        levels = block_levels(played, rate)
        heard = np.flatnonzero(levels >= SILENT_DB)
        # A block the box saw motion in: most of its frames over the gain's floor.
        moved = _blocks([m for m, _ in seen], m.fps, len(levels)).mean(axis=1) > 0.5
        result["videos"][Path(video).name] = {
            "seconds": round(len(played) / rate, 2),
            "median_level_db": float(np.median(levels)),
            "silent_fraction": float(np.mean(levels < SILENT_DB)),
            "moving_blocks": int(moved.sum()),
            "silent_while_moving_fraction": (float(np.mean(levels[moved] < SILENT_DB))
                                             if moved.any() else None),
            "first_sound_s": float(heard[0] * BLOCK_S) if len(heard) else None,
            **_pitch_by_place(played, seen, rate, m.fps)}
    return result


def format_listen(path: str, r: dict) -> str:
    d = r["dance"]

    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = [f"{path}: motion scale {r['scale']}, {r['runtime']}",
             f"  unseen dance (seed {d['seed']}, {d['seconds']:g} s): pitch-class movement corr "
             f"{num(d['chroma_movement_corr'], '.2f')}, "
             f"{num(d['chroma_movement_ratio'], '.2f')} of the instrument's; level "
             f"{d['level_db']:.1f} dBFS (instrument {d['instrument_level_db']:.1f})",
             f"  a still room: {r['still_level_db']:.1f} dBFS until the box fades it "
             "(motion.quiet_after_s)"]
    for name, v in r["videos"].items():
        first = "never" if v["first_sound_s"] is None else f"at {v['first_sound_s']:.1f} s"
        moving = v["silent_while_moving_fraction"]
        lines.append(f"  {name}: median {v['median_level_db']:.1f} dBFS, silent "
                     f"{v['silent_fraction'] * 100:.0f} % of {BLOCK_S:g} s blocks ("
                     + ("the box saw no motion" if moving is None else
                        f"{moving * 100:.0f} % of the {v['moving_blocks']} it saw motion in")
                     + f"), first sound {first}, {v['seconds']:.0f} s")
        places = ", ".join(f"{name} {c['across']:.2f} ({c['blocks']})"
                           for name, c in v["strongest_pitch_classes"].items())
        share = v["place_share"]
        lines.append(f"    pitch classes move {num(v['chroma_movement'], '.2f')} a block "
                     f"(the instrument's on the dance: {d['instrument_chroma_movement']:.2f}); "
                     f"strongest by where across the picture the motion is (0 left, 1 "
                     f"right; blocks): {places or 'none'}"
                     + ("" if share is None else
                        f"; that place accounts for {share * 100:.0f} % of its spread"))
    return "\n".join(lines)


def add_commands(subparsers) -> None:
    """Add ``listen`` to a ``python -m train_host`` parser."""
    parser = subparsers.add_parser(
        "listen", help="what bundles play through the box's engine: pitch on an unseen "
                       "dance, level and silence on videos")
    parser.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundles (.dsb) to hear")
    parser.add_argument("--videos", nargs="+", default=[], metavar="VIDEO",
                        help="video files to play, as the box reads a video camera")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of the unseen dance (default 60)")
    parser.add_argument("--seed", type=int, default=UNSEEN_SEED,
                        help=f"seed of the unseen dance (default {UNSEEN_SEED})")
    parser.add_argument("--runtime", default="tflite_runtime",
                        choices=("auto", "ai_edge_litert", "tflite_runtime"),
                        help="runtime to play in (default: the box's, tflite_runtime)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: bundle -> figures")
    parser.set_defaults(func=_listen_command)


def _listen_command(args) -> int:
    from device.errors import ConfigError

    if not 1.0 <= args.seconds <= 3600.0:
        raise ConfigError(f"--seconds must be from 1 to 3600, not {args.seconds:g}")
    for video in args.videos:
        if not Path(video).is_file():
            raise ConfigError(f"--videos: {video} is not a file")
    results = {}
    for path in args.bundles:
        results[path] = listen(path, args.videos, seconds=args.seconds, seed=args.seed,
                               runtime=args.runtime)
        if not args.json:
            print(format_listen(path, results[path]), flush=True)
    if args.json:
        print(json.dumps(results))
    return 0
