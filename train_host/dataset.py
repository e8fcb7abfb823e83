"""Training examples from takes: motion windows paired with audio segments.

Example ``t`` pairs the motiongram window that ends at frame ``t`` (the last
``window_frames`` frames, as the live loop sees it) with the audio segment that
starts where that window ends: samples ``t * hop`` up to ``t * hop + segment``.
The box plays each segment from the moment its window is complete, overlapped
with the segments before it, so every segment sounding at a moment was trained
on that very moment: its first hop is the sound of frame ``t`` itself, and the
rest is what the model expects to follow.

``session_examples`` turns one recorded or imported take (``device.session``)
into examples: its frames are re-timed by their timestamps to the training frame
rate, as a camera running at that rate would have seen them (``device.retime``,
the rule the box uses for a video file), the motiongram is computed by the box's
own function, the motion gain (``device.motiongram.MotionGain``) scales it as the
box does live, and the audio is resampled to the training rate where it differs. ``build_dataset`` does that for every take under some
folders and splits the takes, whole, into training and validation sets.

Nothing here modifies a take. The optional cache (``cache_dir``, one
``<take>.<digest>.npz`` per take) holds each take's re-timed motiongram and its
audio at the training rate, keyed by the take's files (name, sizes, modification
times) and every parameter those arrays depend on; deleting it is always safe.
The motion gain is applied after the cache, so another gain still finds the take.
Windows and segments are cut from them after the cache, by slicing: stored whole
they would be window_frames and segment/hop times bigger (15x for 0.5 s segments)
and slower to load than to cut again, and a new window or segment length still
finds the take in the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.errors import DanceSamplerError, SessionError
from device.motiongram import MotionGain, fits_frames
from device.retime import TICK_TOLERANCE
from device.timeline import AUDIO_SLACK_S, take_timeline, window_ends, windows_at
from device.session import (AUDIO_FILE, FRAMES_FILE, INFO_FILE, TIMES_FILE, Session,
                            SessionInfo, is_headless, list_sessions, read_session,
                            session_info)

if TYPE_CHECKING:
    from train_host.config import TrainConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Bump when what a cache file holds, or how it is computed, changes (2: a
repeated frame carries the motion on)."""

_RESAMPLE_CHUNK = 1 << 16
_RESAMPLER = "swresample"   # recorded in the cache key: another method, other samples


class DatasetError(DanceSamplerError, ValueError):
    """Takes cannot be made into training examples; the message says which and why."""


@dataclass(frozen=True)
class Examples:
    """Aligned training examples from one or more takes."""

    motion: np.ndarray
    """float32 (N, window_frames, features): motiongram windows."""
    audio: np.ndarray
    """float32 (N, segment_samples): the audio segment each window sounds with."""
    labels: np.ndarray
    """str (N,): the label of the frame each window ends on."""
    take: np.ndarray
    """int (N,): which take each example came from, for splitting by take."""

    def __len__(self) -> int:
        return len(self.motion)

    def subset(self, index: np.ndarray) -> Examples:
        return Examples(self.motion[index], self.audio[index], self.labels[index],
                        self.take[index])

    @staticmethod
    def concatenate(parts: list[Examples]) -> Examples:
        return Examples(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("motion", "audio", "labels", "take")))

    @staticmethod
    def empty(window_frames: int, features: int, segment_samples: int) -> Examples:
        """No examples, with the shapes and types that examples of these sizes have."""
        return Examples(np.zeros((0, window_frames, features), np.float32),
                        np.zeros((0, segment_samples), np.float32), np.zeros(0, str),
                        np.zeros(0, int))


def take_levels_db(examples: Examples) -> dict[int, float]:
    """Each take's median segment level, as ``evaluate.loudness_db`` measures it;
    one take at a time, so only one take's segments are ever copied."""
    from train_host.evaluate import loudness_db  # evaluate imports this module

    return {int(take): float(np.median(loudness_db(examples.audio[examples.take == take])))
            for take in np.unique(examples.take)}


def even_levels(train: Examples, validation: Examples) -> dict[int, float]:
    """Scale each take's audio, in place, so that its median segment level is the
    median over the training takes of theirs; returns each take's gain in dB.

    Each take counts once, however long. The validation takes are brought to
    the same level. Nothing on disk changes."""
    levels = take_levels_db(train)
    if not levels:
        return {}
    reference = float(np.median(list(levels.values())))
    levels.update(take_levels_db(validation))
    gains = {take: reference - level for take, level in levels.items()}
    for examples in (train, validation):
        for take in np.unique(examples.take):
            rows = examples.take == take
            examples.audio[rows] *= np.float32(10.0 ** (gains[int(take)] / 20.0))
    return gains


def example_ends(frames: int, audio_samples: int, *, window_frames: int, segment_samples: int,
                 hop_samples: int, stride: int = 1) -> np.ndarray:
    """The frames that ``make_examples`` ends a window on (``device.timeline.window_ends``)."""
    return window_ends(frames, audio_samples, window_frames=window_frames,
                       segment_samples=segment_samples, hop_samples=hop_samples, stride=stride)


def make_examples(motion: np.ndarray, audio: np.ndarray, *, window_frames: int,
                  segment_samples: int, hop_samples: int, labels=None, take: int = 0,
                  stride: int = 1) -> Examples:
    """Every ``stride``-th window of a take whose segment lies wholly inside the audio."""
    frames = len(motion)
    if len(audio) < frames * hop_samples:
        raise ValueError(f"audio has {len(audio)} samples, fewer than {frames} frames "
                         f"of {hop_samples}")
    ends = example_ends(frames, len(audio), window_frames=window_frames,
                        segment_samples=segment_samples, hop_samples=hop_samples,
                        stride=stride)
    if not len(ends):   # a take shorter than one window and its segment
        return Examples.empty(window_frames, motion.shape[-1], segment_samples)
    x = windows_at(motion, ends, window_frames)
    starts = ends * hop_samples
    y = np.stack([audio[s:s + segment_samples] for s in starts]).astype(np.float32)
    labels = np.asarray(labels if labels is not None else [""] * frames)[ends]
    return Examples(x, y, labels, np.full(len(ends), take))


def consecutive(examples: Examples) -> np.ndarray:
    """bool (N,): where example ``i`` is the window one camera frame after example
    ``i - 1`` of the same take (the two windows share all but one frame), as
    ``make_examples`` lays out a take's windows at stride 1. Where the dancer
    stands still any two windows look alike, so a still window may pair with a
    still one further back: still with still, which is what it means."""
    m = examples.motion
    follows = np.zeros(len(examples), bool)
    if len(examples) > 1 and m.shape[1] > 1:
        follows[1:] = ((examples.take[1:] == examples.take[:-1])
                       & (m[1:, :-1] == m[:-1, 1:]).all(axis=(1, 2)))
    return follows


def gained_motion(motion: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """A take's motion (T, features) scaled by ``cfg``'s motion gain from a fresh
    level, as the box scales it live: what the model hears in training."""
    return MotionGain(cfg.motion_gain, cfg.motiongram, fps=cfg.data.fps).apply(motion)


# ---- one take ----------------------------------------------------------------------


def resample(audio: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """Mono float32 audio at another sample rate, time-aligned, with swresample (PyAV).

    swresample low-pass filters before it decimates; linear interpolation would
    not, and would fold everything above the new Nyquist frequency back into the
    sound the model learns. Sample ``n`` of the result is at ``n / rate`` seconds,
    as sample ``m`` of the input was at ``m / source_rate``.
    """
    from fractions import Fraction

    import av  # the host's media library; only resampling needs it here

    audio = np.asarray(audio, np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    pieces = []
    for start in range(0, len(audio), _RESAMPLE_CHUNK):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio[None, start:start + _RESAMPLE_CHUNK]),
            format="flt", layout="mono")
        frame.sample_rate = source_rate
        frame.pts, frame.time_base = start, Fraction(1, source_rate)
        pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    out = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    # The filter's tail can leave a sample more or fewer than the exact length.
    count = round(len(audio) * rate / source_rate)
    return np.pad(out[:count], (0, max(0, count - len(out)))).astype(np.float32, copy=False)


@dataclass(frozen=True)
class PreparedTake:
    """A take on the training timeline: what its examples are cut from, and what is cached."""

    info: SessionInfo
    motion: np.ndarray
    """float32 (T, features): the motiongram of the re-timed frames, one row per
    tick, before the motion gain."""
    audio: np.ndarray
    """float32 (T * hop,): the sound of those ticks at the training sample rate."""
    first_tick: int
    """The tick (at the training fps) that ``motion[0]`` and ``audio[0]`` are at."""
    fps: int
    """The training frame rate the take was re-timed to."""

    @property
    def label(self) -> str:
        return self.info.label

    @property
    def seconds(self) -> float:
        """How much of the take the examples are cut from."""
        return len(self.motion) / self.fps

    def examples(self, cfg: TrainConfig, *, take: int, stride: int = 1) -> Examples:
        """The take's examples, every one labelled with the take's label."""
        data = cfg.data
        return make_examples(gained_motion(self.motion, cfg), self.audio,
                             window_frames=data.window_frames,
                             segment_samples=data.segment_samples,
                             hop_samples=data.hop_samples,
                             labels=np.full(len(self.motion), self.label), take=take,
                             stride=stride)

    def example_count(self, cfg: TrainConfig, *, stride: int = 1) -> int:
        data = cfg.data
        return len(example_ends(len(self.motion), len(self.audio),
                                window_frames=data.window_frames,
                                segment_samples=data.segment_samples,
                                hop_samples=data.hop_samples, stride=stride))


def prepare_take(session: str | os.PathLike | Session, cfg: TrainConfig, *,
                 cache_dir: str | os.PathLike | None = None) -> PreparedTake:
    """Re-time a take to ``cfg.data.fps`` and take its motiongram, and its audio at
    ``cfg.data.sample_rate``; from ``cache_dir`` when that holds this very take
    computed with these parameters."""
    if isinstance(session, Session):
        info, loaded = session.info, session
    else:
        info, loaded = session_info(Path(session)), None
    m = cfg.motiongram
    if not fits_frames(info.width, info.height, m):
        raise DatasetError(f"{info.path}: frames are {info.width}x{info.height} but the "
                           f"training config's motiongram takes {m.frame_width}x"
                           f"{m.frame_height} frames (or a whole multiple of that size)")
    if info.problems:
        # A take cut off by a power failure is still good up to its last flush.
        log.warning("take %s: %s; using what it holds", info.path.name, "; ".join(info.problems))

    cache_file = key = None
    if cache_dir is not None:
        digest, key = _cache_key(info, cfg)
        cache_file = Path(cache_dir) / f"{info.path.name}.{digest}.npz"
        cached = _load_cached(cache_file, key)
        if cached is not None:
            log.debug("take %s: from the cache (%s)", info.path.name, cache_file.name)
            return PreparedTake(info, *cached, fps=cfg.data.fps)

    if loaded is None:
        loaded = read_session(info.path)
    motion, audio, first = _retime(loaded, cfg)
    if cache_file is not None:
        _save_cached(cache_file, key, motion, audio, first)
    return PreparedTake(info, motion, audio, first, fps=cfg.data.fps)


def session_examples(session: str | os.PathLike | Session, cfg: TrainConfig, *, take: int,
                     stride: int = 1, cache_dir: str | os.PathLike | None = None) -> Examples:
    """Training examples from one take (a folder or a read ``Session``).

    The frames are re-timed to ``cfg.data.fps`` by their timestamps
    (``frame_ticks``), the motiongram is ``cfg.motiongram``'s, the audio is
    resampled to ``cfg.data.sample_rate`` if the take has another rate, and every
    example carries the take's label and the index ``take``. A take too short for
    one window and its segment gives no examples (with a warning). Refuses an
    unusable take with one line naming it (``SessionError``/``DatasetError``); a
    take that was not cleanly stopped is used up to its last whole frame.
    """
    prepared = prepare_take(session, cfg, cache_dir=cache_dir)
    if not prepared.example_count(cfg, stride=stride):
        log.warning("take %s: %.2f s is too short for one example (%d frames and %.2f s of "
                    "sound)", prepared.info.path.name, prepared.seconds,
                    cfg.data.window_frames, cfg.data.segment_seconds)
    return prepared.examples(cfg, take=take, stride=stride)


def _retime(session: Session, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(motion per tick, audio of those ticks, first tick) for a take read whole: the
    box's own rule (``device.timeline.take_timeline``), resampling where needed."""
    try:
        return take_timeline(session, fps=cfg.data.fps, sample_rate=cfg.data.sample_rate,
                             motiongram=cfg.motiongram, resample=resample)
    except SessionError as exc:
        raise DatasetError(str(exc)) from None


# ---- the cache ---------------------------------------------------------------------


def add_cache_option(parser) -> None:
    """The ``--cache DIR`` option of the commands that build datasets."""
    parser.add_argument("--cache", metavar="DIR",
                        help="where prepared takes are kept between runs (default: "
                             "out/dataset-cache; 'none': no cache)")


def cache_dir_option(value: str | None) -> Path | None:
    """The cache folder a ``--cache`` value names: ``out/dataset-cache`` in the
    project (its git-ignored scratch; the cache holds only derived arrays) when
    not given, no cache for ``none``."""
    from device.config import resolve_path

    if value is None:
        return resolve_path("out/dataset-cache")
    return None if value == "none" else Path(value)


def _cache_key(info: SessionInfo, cfg: TrainConfig) -> tuple[str, str]:
    """(file-name digest, full key): the take's files and every parameter the
    prepared arrays depend on. Window and segment lengths are not among them:
    examples are cut from the prepared arrays after the cache."""
    files = {}
    for name in (INFO_FILE, FRAMES_FILE, TIMES_FILE, AUDIO_FILE):
        try:
            stat = (info.path / name).stat()
        except OSError as exc:
            raise SessionError(f"{info.path}: cannot read {name} ({exc.strerror})") from None
        files[name] = [stat.st_size, stat.st_mtime_ns]
    key = json.dumps({"version": CACHE_VERSION, "take": info.path.name, "files": files,
                      "fps": cfg.data.fps, "sample_rate": cfg.data.sample_rate,
                      "motiongram": dataclasses.asdict(cfg.motiongram),
                      "tick_tolerance": TICK_TOLERANCE, "audio_slack_s": AUDIO_SLACK_S,
                      "resampler": _RESAMPLER}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24], key


def _load_cached(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The cached arrays, or None on a miss or an unreadable cache file."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:   # a digest collision, however unlikely
                return None
            return stored["motion"], stored["audio"], int(stored["first_tick"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("dataset cache %s is unreadable (%s); computing the take again", path, exc)
        return None


def _save_cached(path: Path, key: str, motion: np.ndarray, audio: np.ndarray,
                 first: int) -> None:
    """Write a cache file whole or not at all; a cache that cannot be written is only
    slower, never an error."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            # Uncompressed: audio hardly compresses, and loading stays a plain read.
            np.savez(out, key=np.array(key), motion=motion, audio=audio,
                     first_tick=np.int64(first))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("cannot write the dataset cache %s (%s); going on without it",
                    path, exc.strerror or exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# ---- many takes --------------------------------------------------------------------


def find_takes(roots: list[str | os.PathLike]) -> list[Path]:
    """Every take under each root (a root may itself be a take), each once, sorted by
    folder name (the start time, then the label)."""
    found: dict[Path, Path] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise DatasetError(f"{root}: no such folder of takes")
        if (root / INFO_FILE).exists():
            takes = [root]
        else:
            # list_sessions skips hidden folders (an importer's .importing-*
            # staging) and lists a broken take rather than leaving it out.
            takes = []
            for info in list_sessions(root):
                if is_headless(info.path):
                    log.warning("take %s: left out: it was cut off before its %s was "
                                "written", info.path.name, INFO_FILE)
                else:
                    takes.append(info.path)
            if not takes:
                log.warning("%s: no takes in this folder", root)
        for path in takes:
            found.setdefault(path.resolve(), path)
    return sorted(found.values(), key=lambda path: (path.name, str(path)))


def split_takes(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """Which takes to hold out for validation: a bool per take, stratified by label.

    ``round(n * fraction)`` takes, at least one when ``fraction > 0`` and there are
    two takes or more, and never all of them. Every label with two takes or more
    gives one to validation first (while the count allows), then the rest go where
    a label is furthest below its share; a label always keeps a take for training
    unless no other take is left to hold out. The same labels, fraction and seed
    always give the same split.
    """
    n = len(labels)
    held = np.zeros(n, bool)
    if n < 2 or fraction <= 0:
        return held
    want = min(max(round(n * fraction), 1), n - 1)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    names = sorted(groups)
    order = [names[i] for i in rng.permutation(len(names))]   # breaks ties fairly
    members = {label: [groups[label][i] for i in rng.permutation(len(groups[label]))]
               for label in names}
    quota = dict.fromkeys(names, 0)
    spare = [label for label in order if len(groups[label]) >= 2]
    for label in spare[:want]:
        quota[label] = 1
    while sum(quota.values()) < want:
        room = [label for label in spare if quota[label] < len(groups[label]) - 1]
        if not room:
            break
        label = max(room, key=lambda name: (len(groups[name]) * fraction - quota[name],
                                            -order.index(name)))
        quota[label] += 1
    for label in names:
        held[members[label][:quota[label]]] = True
    if held.sum() < want:
        # No label can spare another take: make up the count from any take.
        rest = [i for i in rng.permutation(n) if not held[i]]
        held[rest[:want - held.sum()]] = True
    return held


def build_dataset(roots: list[str | os.PathLike], cfg: TrainConfig, *,
                  cache_dir: str | os.PathLike | None = None,
                  stride: int = 1) -> tuple[Examples, Examples, dict]:
    """Training and validation examples from every take under ``roots``, split by take.

    Returns ``(train, validation, summary)`` as ``demo_data.demo_examples`` does.
    ``Examples.take`` numbers the usable takes in sorted order. The split is
    ``split_takes`` with ``cfg.data.validation_fraction`` and ``cfg.seed``. Takes
    too short for one example are left out (with a warning, and listed under
    ``skipped``). A take that cannot be read stops the build with one line naming
    it: train on the takes you meant to, or move that one away. ``cache_dir``
    (None: no cache) keeps each take's prepared arrays between builds.
    """
    started = time.perf_counter()
    paths = find_takes(roots)
    if not paths:
        raise DatasetError(f"no takes in {', '.join(map(str, roots))}")
    prepared: list[PreparedTake] = []
    skipped: list[str] = []
    for path in paths:
        try:
            take = prepare_take(path, cfg, cache_dir=cache_dir)
        except SessionError as exc:
            raise SessionError(f"{exc} (fix the take, or move it out of the folder to "
                               "train without it)") from None
        if take.example_count(cfg, stride=stride):
            prepared.append(take)
        else:
            log.warning("take %s: %.2f s is too short for one example (%d frames and %.2f s "
                        "of sound); left out", path.name, take.seconds,
                        cfg.data.window_frames, cfg.data.segment_seconds)
            skipped.append(path.name)
    if not prepared:
        raise DatasetError(f"none of the {len(paths)} take(s) in {', '.join(map(str, roots))} "
                           f"is long enough for one example")

    held = split_takes([take.label for take in prepared], cfg.data.validation_fraction,
                       cfg.seed)
    train = _assemble(prepared, np.flatnonzero(~held), cfg, stride)
    validation = _assemble(prepared, np.flatnonzero(held), cfg, stride)
    summary = _summary(roots, prepared, held, train, validation, skipped, cfg, stride)
    log.info("dataset: %d take(s), %.1f min, %d training and %d validation examples "
             "(%d take(s) held out) in %.1f s", summary["takes"], summary["seconds"] / 60,
             len(train), len(validation), summary["validation_takes"],
             time.perf_counter() - started)
    return train, validation, summary


def _assemble(takes: list[PreparedTake], chosen: np.ndarray, cfg: TrainConfig,
              stride: int) -> Examples:
    """The examples of the chosen takes, written into arrays allocated once (no
    concatenation: with 0.5 s segments an hour of dance is several gigabytes)."""
    data = cfg.data
    counts = [takes[i].example_count(cfg, stride=stride) for i in chosen]
    total = sum(counts)
    width = max([len(takes[i].label) for i in chosen], default=1)
    out = Examples(np.empty((total, data.window_frames, cfg.motiongram.features), np.float32),
                   np.empty((total, data.segment_samples), np.float32),
                   np.empty(total, f"<U{max(width, 1)}"), np.empty(total, int))
    at = 0
    for i, count in zip(chosen, counts):
        part = takes[i].examples(cfg, take=int(i), stride=stride)
        for name in ("motion", "audio", "labels", "take"):
            getattr(out, name)[at:at + count] = getattr(part, name)
        at += count
    return out


def _summary(roots, takes: list[PreparedTake], held: np.ndarray, train: Examples,
             validation: Examples, skipped: list[str], cfg: TrainConfig, stride: int) -> dict:
    """What the model was trained on, as plain JSON values (it goes into the bundle)."""
    data = cfg.data
    seconds = sum(take.seconds for take in takes)
    labels: dict[str, dict] = {}
    for label in sorted({take.label for take in takes}):
        mine = [i for i, take in enumerate(takes) if take.label == label]
        train_n = int((train.labels == label).sum())
        validation_n = int((validation.labels == label).sum())
        labels[label] = {"takes": len(mine), "validation_takes": int(held[mine].sum()),
                         "seconds": round(sum(takes[i].seconds for i in mine), 3),
                         "segments": train_n + validation_n, "train_segments": train_n,
                         "validation_segments": validation_n}
    summary = {
        "source": "sessions", "roots": [str(root) for root in roots],
        "takes": len(takes), "train_takes": int((~held).sum()),
        "validation_takes": int(held.sum()),
        "seconds": round(seconds, 3), "hours": round(seconds / 3600, 6),
        "segments": {"train": len(train), "validation": len(validation)},
        "labels": labels,
        "fps": data.fps, "sample_rate": data.sample_rate,
        "segment_seconds": data.segment_seconds, "segment_samples": data.segment_samples,
        "window_frames": data.window_frames, "stride": stride,
        "validation_fraction": data.validation_fraction, "seed": cfg.seed,
        "validation_sessions": [take.info.path.name for take, out in zip(takes, held) if out],
        "skipped": skipped,
    }
    if len(takes) == 1:
        summary["note"] = "only one take: no validation set (the split is by take)"
    elif not held.any():
        summary["note"] = "validation_fraction is 0: no validation set"
    return summary
