"""The corpus voice: grains of recorded takes, chosen live by how the dancer moves.

Corpus-based concatenative synthesis (as in CataRT or FluCoMa), driven by the
camera. A take is cut into grains on the frame grid: grain ``t`` is the segment of
the take's sound that starts at frame ``t`` (``segment_samples`` long, what a
model voice makes per frame), indexed by the motion window that ends at ``t``,
gained as the model hears it (``device.motiongram.MotionGain``) and projected onto
its first ``dims`` principal components. Live, each frame:

1. projects the dancer's window the same way and finds the nearest grain;
2. keeps the recording running where it can: the grain that follows the one just
   played is chosen instead when it is at most ``1 + continuity`` times as far
   (concatenative synthesis's continuity cost), so a dance close to the recorded
   one plays the recorded music itself, and a new gesture jumps;
3. at a stop between the dancer's moves (a motion beat) takes instead, among the
   nearest grains, the one that starts with the sharpest attack;
4. brings the grain part of the way to the takes' overall level (``leveling``) and
   scales it by the dancer's activity (the quantity of motion of the last frames
   against half the corpus's typical one, at most 1): stillness is quiet.

The engine overlap-adds one segment per frame as it does a model's, so the
following grain lines up sample for sample with the one before (the recording
plays back unchanged) and a jump is crossfaded over the segment's weights.

Per frame this is one small matrix product over every grain (``dims`` numbers
each) and a copy of one segment: numpy alone. ``build_corpus`` makes the bundle
members from takes already on the frame timeline; ``corpus_from_takes`` does it
for take folders on the box (``python -m device corpus``), the host for its
datasets (``python -m train_host corpus``). The format is in docs/bundle.md.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from device.bundle import AudioParams, Bundle, Manifest, TensorSpec, write_bundle
from device.config import CorpusConfig
from device.errors import BundleError, DanceSamplerError
from device.motiongram import MotionGain, MotionGainParams, MotiongramParams, stop_between_moves
from device.publish import level_db
from device.timeline import take_timeline, window_ends, windows_at

log = logging.getLogger(__name__)

AUDIO, INDEX, BASIS, MEAN, GRAINS = ("corpus_audio.npy", "corpus_index.npy",
                                     "corpus_basis.npy", "corpus_mean.npy",
                                     "corpus_grains.npy")
MEMBERS = (AUDIO, INDEX, BASIS, MEAN, GRAINS)
SILENT_DB = -60.0
"""Takes whose sound is quieter than this (RMS, dBFS) make no voice."""
ACTIVITY_FRAMES = 3
"""The last frames of the window whose quantity of motion sets the grain's level."""
QUIET_SHARE = 0.5
"""Under this share of the corpus's median quantity of motion, grains play quieter."""
ATTACK_CANDIDATES = 16
"""At a motion beat, the nearest grains among which the sharpest attack is taken."""
MAX_LEVEL_UP_DB = 12.0
"""Leveling lifts a quiet grain by at most this much (silence is never lifted)."""
MAX_VALUE = 1e6
"""The largest magnitude a voice's index, basis or mean may hold."""
_MU = 255.0
_CHUNK = 4096
_AUDIO_CHUNK = 1 << 20


class CorpusError(DanceSamplerError, ValueError):
    """Takes cannot be made into a corpus voice; the message says which and why."""


@dataclass(frozen=True)
class Piece:
    """One take on the frame timeline, as a voice is cut from it."""

    name: str
    label: str
    motion: np.ndarray
    """float32 (T, features): the gained motiongram, one row per frame."""
    audio: np.ndarray
    """float32 (T * hop,): the take's sound on the same frames."""


@dataclass(frozen=True)
class VoiceShape:
    """What a voice must share with the models it plays beside (the model button
    crossfades between voices only when these agree)."""

    fps: int
    motiongram: MotiongramParams
    audio: AudioParams
    window_frames: int
    motion_gain: MotionGainParams

    @classmethod
    def of(cls, manifest: Manifest) -> VoiceShape:
        return cls(manifest.fps, manifest.motiongram, manifest.audio, manifest.window_frames,
                   manifest.gain)


# ---- building -------------------------------------------------------------------


def corpus_from_takes(paths: list[str | Path], shape: VoiceShape, cfg: CorpusConfig, *,
                      name: str, out: str | Path, resample=None) -> Path:
    """A corpus voice bundle at ``out`` from take folders (the box's way: takes at
    the voice's sample rate, or ``resample`` given)."""
    from device.session import read_session

    _refuse_existing(out)   # before reading any take
    pieces = []
    for path in paths:
        session = read_session(path)
        motion, audio, _ = take_timeline(session, fps=shape.fps,
                                         sample_rate=shape.audio.sample_rate,
                                         motiongram=shape.motiongram, resample=resample)
        gained = MotionGain(shape.motion_gain, shape.motiongram, fps=shape.fps).apply(motion)
        pieces.append(Piece(Path(path).name, session.info.label, gained, audio))
        del session   # its frames and sound: only the timeline's are kept
    return write_corpus(pieces, shape, cfg, name=name, out=out,
                        source={"data": {"takes": [str(p) for p in paths]}})


BUILD_TIMEOUT_S = 300.0
"""Longest a voice's build in a child process may take."""


def build_in_child(takes: list[Path], shape: VoiceShape, cfg: CorpusConfig, *, name: str,
                   out: Path, timeout: float = BUILD_TIMEOUT_S) -> Path:
    """``corpus_from_takes`` in a child process at a lower CPU priority: what the show
    does, so the build's memory (a few hundred MB for a long take) is the child's, and
    a build the kernel kills for memory takes the show down with it never. One
    ``CorpusError`` line when it fails."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_build, name="voice-builder",
                            args=(send, [str(t) for t in takes], shape, cfg, name, str(out)))
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            child.kill()
            raise CorpusError(f"{out.name}: the build took longer than {timeout:g} s; gave up")
        kind, value = receive.recv()
    except EOFError:
        child.join(5)
        code = child.exitcode
        why = (f"killed by signal {-code}{' (out of memory?)' if code == -9 else ''}"
               if code is not None and code < 0 else f"exit {code}")
        raise CorpusError(f"{out.name}: the build ended without a word ({why})") from None
    finally:
        child.join(5)
        receive.close()
    if kind != "ok":
        raise CorpusError(value)
    return Path(value)


def _child_build(send, takes, shape, cfg, name, out) -> None:
    import os

    try:
        os.nice(10)
    except OSError:   # a service whose system calls exclude it: build at its priority
        pass
    try:
        path = corpus_from_takes(takes, shape, cfg, name=name, out=out)
    except DanceSamplerError as exc:
        send.send(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent in one line
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        send.send(("ok", str(path)))
    finally:
        send.close()


def write_corpus(pieces: list[Piece], shape: VoiceShape, cfg: CorpusConfig, *, name: str,
                 out: str | Path, source: dict | None = None) -> Path:
    """Build the voice from ``pieces`` and write it as a bundle; its path. A file
    already at ``out`` is refused, never replaced."""
    _refuse_existing(out)
    manifest, members = build_corpus(pieces, shape, cfg, name=name, source=source)
    return write_bundle(out, manifest, members)


def _refuse_existing(out: str | Path) -> None:
    if Path(out).exists():
        raise CorpusError(f"{out}: already exists; pass another --out, or delete it first")


def voice_file(take: Path) -> str:
    """The file name of the voice built from one take on the box."""
    return f"voice-{take.name}.dsb"


def build_corpus(pieces: list[Piece], shape: VoiceShape, cfg: CorpusConfig, *, name: str,
                 source: dict | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and members of a corpus voice cut from ``pieces``."""
    a, w = shape.audio, shape.window_frames
    ends = [window_ends(len(p.motion), len(p.audio), window_frames=w,
                        segment_samples=a.segment_samples, hop_samples=a.hop_samples)
            for p in pieces]
    total = sum(map(len, ends))
    if total < cfg.min_seconds * shape.fps:
        raise CorpusError(f"{_names(pieces)}: {total / shape.fps:.1f} s of dance with sound is "
                          f"too short for a voice (at least {cfg.min_seconds:g} s, "
                          "corpus.min_seconds)")
    if total > cfg.max_seconds * shape.fps:
        share = cfg.max_seconds * shape.fps / total
        log.info("corpus: %.0f s of takes, keeping the first %.0f %% of each "
                 "(corpus.max_seconds %g)", total / shape.fps, share * 100, cfg.max_seconds)
        ends = [e[:int(len(e) * share)] for e in ends]
    spans = [(p.audio, e[0] * a.hop_samples, e[-1] * a.hop_samples + a.segment_samples)
             for p, e in zip(pieces, ends) if len(e)]
    level = _rms_db(spans)
    if level < SILENT_DB:
        raise CorpusError(f"{_names(pieces)}: the sound is silent ({level:.0f} dBFS RMS, under "
                          f"{SILENT_DB:g}); a voice needs the music the dance was recorded with")

    starts, follows, activity, takes = [], [], [], []
    offset = 0
    for piece, e in zip(pieces, ends):
        if not len(e):
            continue
        starts.append(offset + (e - e[0]) * a.hop_samples)
        # The next grain plays on only where it is the very next frame of the same take.
        base = sum(map(len, follows))
        nxt = np.arange(base + 1, base + len(e) + 1)
        nxt[-1] = -1
        follows.append(nxt)
        activity.append(_activity(piece.motion, e, shape.motiongram.width))
        takes.append({"name": piece.name, "label": piece.label,
                      "seconds": round(len(e) / shape.fps, 3), "grains": len(e)})
        offset += (e[-1] - e[0]) * a.hop_samples + a.segment_samples
    grains = np.stack([np.concatenate(starts), np.concatenate(follows)], axis=1).astype(np.int64)
    audio = _encode_spans(spans, offset, cfg.sample_format)
    mean, basis, index = _index(pieces, ends, w, cfg.dims)
    moving = np.concatenate(activity)
    moving = moving[moving > shape.motion_gain.floor]
    quiet_below = float(QUIET_SHARE * np.median(moving)) if len(moving) else 1e-3

    params = CorpusParams(grains=len(grains), dims=basis.shape[1],
                          sample_format=cfg.sample_format,
                          seconds=round(len(grains) / shape.fps, 3),
                          continuity=cfg.continuity, quiet_below=round(quiet_below, 8),
                          leveling=cfg.leveling, level_db=round(level, 2), takes=takes)
    features = shape.motiongram.features
    manifest = Manifest(
        name=name, created="1980-01-01T00:00:00Z", fps=shape.fps,
        motiongram=shape.motiongram, audio=a, window_frames=w,
        input=TensorSpec((1, w, features), "float32"),
        output=TensorSpec((1, a.segment_samples), "float32"),
        motion_gain=shape.motion_gain, voice="corpus", corpus=asdict(params),
        training=source or {})
    members = {AUDIO: _npy(audio), INDEX: _npy(index),
               BASIS: _npy(basis), MEAN: _npy(mean), GRAINS: _npy(grains)}
    return manifest, members


@dataclass(frozen=True)
class CorpusParams:
    """The manifest's ``corpus`` object."""

    grains: int
    dims: int
    sample_format: str
    seconds: float
    continuity: float
    quiet_below: float
    """Quantity of (gained) motion under which grains are played quieter, in
    proportion; half the corpus's median over its moving frames."""
    leveling: float
    """How far each grain's level is brought to ``level_db``: 0 as recorded, 1 all alike."""
    level_db: float
    """The takes' RMS level (dBFS) over all their grains."""
    takes: list


def _index(pieces, ends, window_frames: int, dims: int):
    """(mean, basis, index): principal components of the grains' motion windows,
    accumulated a chunk at a time (an hour of windows would not fit at once)."""
    features = pieces[0].motion.shape[1] * window_frames
    total, count = np.zeros(features), 0
    scatter = np.zeros((features, features))
    for chunk in _window_chunks(pieces, ends, window_frames):
        x = chunk.astype(np.float64)
        total += x.sum(axis=0)
        scatter += x.T @ x
        count += len(x)
    mean = total / count
    cov = scatter / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:min(dims, features)]
    # A sign convention, so the same takes always give the same bytes.
    basis = vectors[:, order] * np.sign(vectors[np.abs(vectors[:, order]).argmax(axis=0),
                                                order])
    basis = basis.astype(np.float32)
    mean = mean.astype(np.float32)
    index = np.concatenate([(chunk - mean) @ basis
                            for chunk in _window_chunks(pieces, ends, window_frames)])
    return mean, basis, index.astype(np.float32)


def _window_chunks(pieces, ends, window_frames):
    for piece, e in zip(pieces, ends):
        for s in range(0, len(e), _CHUNK):
            yield windows_at(piece.motion, e[s:s + _CHUNK], window_frames).reshape(
                len(e[s:s + _CHUNK]), -1)


def _activity(motion: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    amount = motion[:, :width].mean(axis=1)
    return np.array([amount[max(0, t - ACTIVITY_FRAMES + 1):t + 1].mean() for t in ends],
                    np.float32)


def _names(pieces) -> str:
    names = [p.name for p in pieces]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") \
        if names else "no takes"


def _rms_db(spans) -> float:
    """RMS level (dBFS) of the ``(audio, start, stop)`` spans together, a chunk at a time."""
    total, count = 0.0, 0
    for audio, start, stop in spans:
        for s in range(start, stop, _AUDIO_CHUNK):
            x = audio[s:min(stop, s + _AUDIO_CHUNK)].astype(np.float64)
            total += float(np.dot(x, x))
            count += len(x)
    return 10 * np.log10(max(total / max(count, 1), 1e-12))


def _encode_spans(spans, samples: int, sample_format: str) -> np.ndarray:
    """The spans one after the other in the stored sample format, a chunk at a time
    (a float copy of an hour of takes would be 300 MB)."""
    out = np.empty(samples, "<i2" if sample_format == "int16" else np.uint8)
    at = 0
    for audio, start, stop in spans:
        for s in range(start, stop, _AUDIO_CHUNK):
            chunk = _encode(audio[s:min(stop, s + _AUDIO_CHUNK)], sample_format)
            out[at:at + len(chunk)] = chunk
            at += len(chunk)
    assert at == samples
    return out


def _encode(audio: np.ndarray, sample_format: str) -> np.ndarray:
    x = np.clip(audio, -1.0, 1.0)
    if sample_format == "int16":
        return np.round(x * 32767).astype("<i2")
    y = np.sign(x) * np.log1p(_MU * np.abs(x)) / np.log1p(_MU)
    return np.round((y + 1) * 127.5).astype(np.uint8)


def _decoder(sample_format: str) -> np.ndarray:
    """float32 value of every stored sample code (a table: decoding is one take)."""
    if sample_format == "int16":
        return (np.arange(-32768, 32768) / 32767).astype(np.float32)
    y = np.arange(256) / 127.5 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(_MU)) / _MU).astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


# ---- playing ---------------------------------------------------------------------


class CorpusVoice:
    """One motion window in, one grain of recorded sound out (what ``Performer``
    does for a model voice). Called from the model thread, one call at a time."""

    runtime = "corpus"
    own_strikes = True
    """It takes a grain with an attack at the dancer's stops: the engine adds no
    strike of its own there (``device.engine.Strikes``)."""

    def __init__(self, bundle: Bundle):
        m, where = bundle.manifest, str(bundle.path)
        try:
            c = _params(m.corpus)
        except (TypeError, KeyError, ValueError) as exc:
            raise BundleError(f"{where}: malformed corpus ({exc})") from None
        arrays = {}
        for name in MEMBERS:
            if name not in bundle.graphs:
                raise BundleError(f"{where}: a corpus voice needs {name}")
            try:
                arrays[name] = _array(bundle.graphs[name])
            except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds
                raise BundleError(f"{where}: {name} is not an array ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:120]})") from None
        width = m.window_frames * m.motiongram.features
        audio_dtype = np.dtype("<i2") if c.sample_format == "int16" else np.dtype(np.uint8)
        expected = {AUDIO: (audio_dtype, None), INDEX: (np.float32, (c.grains, c.dims)),
                    BASIS: (np.float32, (width, c.dims)), MEAN: (np.float32, (width,)),
                    GRAINS: (np.int64, (c.grains, 2))}
        for name, (dtype, shape) in expected.items():
            array = arrays[name]
            if array.dtype != np.dtype(dtype) or (shape and array.shape != shape) \
                    or (shape is None and array.ndim != 1):
                raise BundleError(f"{where}: {name} is {array.dtype} {list(array.shape)}; "
                                  f"expected {np.dtype(dtype)} "
                                  f"{list(shape) if shape else '[samples]'}")
        seg = m.audio.segment_samples
        grains = arrays[GRAINS]
        starts, follows = grains[:, 0], grains[:, 1]
        if c.grains < 1 or starts.min() < 0 or starts.max() > len(arrays[AUDIO]) - seg \
                or follows.min() < -1 or follows.max() >= c.grains:
            raise BundleError(f"{where}: {GRAINS} points outside the voice's audio or grains")
        for name in (INDEX, BASIS, MEAN):
            # Motion windows, their components and projections are small numbers;
            # far larger ones would only overflow the search.
            if not np.isfinite(arrays[name]).all() or np.abs(arrays[name]).max() > MAX_VALUE:
                raise BundleError(f"{where}: {name} holds values that are not finite numbers "
                                  f"within ±{MAX_VALUE:g}")
        self.params = c
        self._audio = arrays[AUDIO]
        self._table = _decoder(c.sample_format)
        self._offset = 32768 if c.sample_format == "int16" else 0
        self._index, self._basis, self._mean = arrays[INDEX], arrays[BASIS], arrays[MEAN]
        self._norms = (self._index.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
        self._starts, self._follows = starts, follows
        self._reach = np.float32((1.0 + c.continuity) ** 2)
        self._seg, self._width = seg, m.motiongram.width
        self._quiet = max(c.quiet_below, 1e-9)
        self._leveling, self._level_db = c.leveling, c.level_db
        self._hop = m.audio.hop_samples
        self._previous = self.chosen = -1
        """The grain played last (its index in the voice)."""
        self.jumps = self.frames = 0
        """Frames played and, of those, jumps (not the grain after the last one)."""

    def _samples(self, start: int, stop: int) -> np.ndarray:
        """float32 samples ``start:stop`` of the voice's audio, decoded."""
        return self._table[self._audio[start:stop].astype(np.int32) + self._offset]

    def _attack(self, grain: int) -> float:
        """How much louder the grain's first hop is than the hop before it."""
        start, hop = int(self._starts[grain]), self._hop
        if start < hop:
            return 0.0
        x = self._samples(start - hop, start + hop)
        floor = np.float32(1.0 / 32767 ** 2)   # one 16-bit step squared: never 0 / 0
        return float(np.dot(x[hop:], x[hop:]) + floor) / float(np.dot(x[:hop], x[:hop]) + floor)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        q = (window.reshape(-1) - self._mean) @ self._basis
        # Squared distances to every grain, but for |q|^2, which all share.
        d = self._norms - 2.0 * (self._index @ q)
        amount = window[:, :self._width].mean(axis=1)
        nxt = self._follows[self._previous] if self._previous >= 0 else -1
        if stop_between_moves(amount):
            # The dancer stops between moves: a fresh grain that starts with an attack.
            k = min(ATTACK_CANDIDATES, len(d))
            chosen = max(map(int, np.argpartition(d, k - 1)[:k]), key=self._attack)
        else:
            chosen = int(d.argmin())
            qq = np.float32(q @ q)
            if nxt >= 0 and d[nxt] + qq <= self._reach * max(d[chosen] + qq, 0.0):
                chosen = int(nxt)
        self.frames += 1
        self.jumps += chosen != nxt
        self._previous = self.chosen = chosen
        start = self._starts[chosen]
        segment = self._samples(start, start + self._seg)
        scale = min(1.0, float(amount[-ACTIVITY_FRAMES:].mean()) / self._quiet)
        if self._leveling:
            db = level_db(segment)
            if db > SILENT_DB:
                scale *= 10 ** (min((self._level_db - db) * self._leveling,
                                    MAX_LEVEL_UP_DB) / 20)
        return segment * np.float32(scale)


def _array(data: bytes) -> np.ndarray:
    """A ``.npy`` member as a read-only view of the bundle's bytes (no copy: a voice's
    audio is most of its memory); object arrays and Fortran order are refused."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy version {version}")
    if fortran or dtype.hasobject:
        raise ValueError("an object or Fortran-ordered array")
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(data, dtype, count, offset=f.tell()).reshape(shape)


def _params(corpus: dict) -> CorpusParams:
    c = CorpusParams(**corpus)
    for key in ("grains", "dims"):
        value = getattr(c, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} is {value!r}; expected a positive integer")
    if c.sample_format not in ("int16", "mulaw"):
        raise ValueError(f"sample_format is {c.sample_format!r}; expected 'int16' or 'mulaw'")
    if isinstance(c.level_db, bool) or not isinstance(c.level_db, (int, float)) \
            or not -120 <= c.level_db <= 20:
        raise ValueError(f"level_db is {c.level_db!r}; expected dBFS from -120 to 20")
    for key in ("continuity", "quiet_below", "seconds", "leveling"):
        value = getattr(c, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value < 1e9:
            raise ValueError(f"{key} is {value!r}; expected a number of at least 0")
    if not isinstance(c.takes, list):
        raise ValueError("takes is not a list")
    return replace(c, continuity=float(c.continuity), quiet_below=float(c.quiet_below),
                   leveling=float(c.leveling), level_db=float(c.level_db))


def open_voice(bundle: Bundle, *, runtime: str = "auto", threads: int = 1):
    """What plays a bundle: its graph's ``Performer``, a ``CorpusVoice``, or a
    ``device.notes.NotesVoice``."""
    if bundle.is_corpus:
        return CorpusVoice(bundle)
    if bundle.manifest.voice == "notes":
        from device.notes import NotesVoice

        return NotesVoice(bundle)
    from device.runtime import Performer

    return Performer.of(bundle, runtime=runtime, threads=threads)
