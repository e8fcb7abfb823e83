"""The model bundle: one file that carries a trained model to the box.

A bundle is a zip archive (suffix ``.dsb``) holding ``manifest.json`` and the
``.tflite`` graph(s) it names. The manifest records everything the device must
match to use the model (motiongram and audio parameters, tensor shapes) and a
SHA-256 of every member. This module is the only definition of the format: the
exporter writes bundles with ``write_bundle``, the deployer and the device read
them with ``read_bundle``. The spec for people is docs/bundle.md.

Reading never trusts the file: a bundle that is not a regular file or not a zip,
is larger than the caps below, lacks a member, fails a checksum, has a manifest
field of the wrong type or names parameters this device cannot honour raises
``BundleError`` with one line naming the file and what is wrong, so the caller
can keep playing the model it has. Whatever else the archive and JSON readers
raise on a damaged file is turned into the same one line; nothing is read past
the caps, whatever the archive's headers claim.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import stat
import typing
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from device.errors import BundleError
from device.motiongram import MotionGainParams, MotiongramParams

log = logging.getLogger(__name__)

FORMAT = "dancesampler-bundle"
FORMAT_VERSION = 4
"""The version written for a voice without a graph (corpus, notes)."""
NOISE_VERSION = 5
"""Version 5 adds ``noise``: a model whose graph also gives the amplitudes of
filtered noise (``device.noise``)."""
LATENT_VERSION = 6
"""Version 6 adds ``latent``: a model whose graph also gives its latent, the
posterior mean it plays from (sent over OSC). Every model exported now has it."""
SCALE_VERSION = 7
"""Version 7 adds ``motiongram.scale``: motion measured on frames finer than the
motiongram. Written only for a voice whose scale is above 1, so every other
bundle stays readable by a box that reads up to version 6."""
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
"""Version 1 bundles (one output tensor, no ``level``), version 2 bundles (no
``motion_gain``: the motion is used as measured), version 3 bundles (no
``voice``: always a model), version 4 bundles (no ``noise``), version 5 bundles
(no ``latent``) and version 6 bundles (no ``motiongram.scale``: 1) still play."""
MAX_NOISE_BANDS = 256
_SCALE_RANGE = next((f.metadata["min"], f.metadata["max"]) for f in fields(MotiongramParams)
                    if f.name == "scale")
VOICES = ("model", "corpus", "notes")
"""What makes a bundle's sound: ``model``, the performer graph; ``corpus``, grains
of recorded takes chosen by motion (``device.corpus``); ``notes``, notes of the
pentatonic scale played by the box's own synthesizer (``device.notes``)."""
SUFFIX = ".dsb"
MANIFEST = "manifest.json"
PERFORMER = "performer.tflite"
"""The graph the live loop runs: a motion window in, one audio segment out."""

MAX_BUNDLE_BYTES = 96 << 20
"""The largest bundle file read (a model is at most 4 MB; a corpus voice holds its
audio: an hour of 8-bit samples at 22050 Hz is 79 MB)."""
MAX_MEMBER_BYTES = 16 << 20
"""The most any member may hold once decompressed; the manifest far less, a corpus
voice's audio (``LARGE_MEMBERS``) as much as a whole bundle."""
LARGE_MEMBERS = ("corpus_audio.npy",)
MAX_MANIFEST_BYTES = 1 << 20
_MAX_RANK = 8

# Fixed member timestamps keep a rebuilt bundle byte-identical (zip's epoch).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class AudioParams:
    """The sound a model makes, as it was trained."""

    sample_rate: int
    """Samples per second of the generated audio."""
    segment_samples: int
    """Length of one generated segment (0.1 s at 22050 Hz is 2205)."""
    hop_samples: int
    """Samples between consecutive segments: one camera frame of audio."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and element type of a graph input or output, batch first."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Manifest:
    """What a bundle says about itself (``manifest.json``)."""

    name: str
    created: str
    """UTC creation time, ISO 8601 (reproducible builds fix it)."""
    fps: int
    """Camera frames per second the model was trained at."""
    motiongram: MotiongramParams
    audio: AudioParams
    window_frames: int
    """Motiongram frames in one model input window."""
    input: TensorSpec
    output: TensorSpec
    """The segment (version 1) or, with ``level``, the segment's shape."""
    level: TensorSpec | None = None
    """The segment's RMS level, [1, 1] (version 2); the segment is the shape scaled to it."""
    noise: TensorSpec | None = None
    """The amplitudes of the segment's noise bands, [1, bands] (version 5); the box
    adds the noise they shape to the shape before scaling it (``device.noise``)."""
    latent: TensorSpec | None = None
    """The model's latent for this window, [1, latent_size] (version 6): the
    graph's last output, which the sound does not use; the box sends it over OSC."""
    motion_gain: MotionGainParams | None = None
    """How the motion was scaled to the dancer's level in training (version 3); the
    box scales live motion the same way. None (versions 1 and 2): not scaled."""
    style_centroids: dict[str, list[float]] = field(default_factory=dict)
    """Mean latent vector of each training label, for steering by style."""
    training: dict[str, Any] = field(default_factory=dict)
    """Free-form summary of the training data, config and metrics."""
    latent_size: int = 0
    """Size of the model's latent (a model voice); 0 for a corpus voice."""
    voice: str = "model"
    """What makes the sound (``VOICES``; version 4; earlier versions: a model)."""
    corpus: dict[str, Any] | None = None
    """A corpus voice's grains and how they were made (``device.corpus.CorpusParams``
    as an object); None for a model voice."""
    notes: dict[str, Any] | None = None
    """A notes voice's settings (``device.notes.NotesParams`` as an object); None, and
    absent from the JSON, for the other voices."""
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Member name to {"sha256": hex, "bytes": size}; filled in by write_bundle."""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def gain(self) -> MotionGainParams:
        """The motion gain the model heard: its own, or none (``reference`` 0) for a
        bundle from before the gain (format 1 or 2), which heard motion as measured."""
        return self.motion_gain or MotionGainParams(reference=0.0)

    @property
    def latent_output_size(self) -> int:
        """How many values the graph's latent output gives; 0: it has none."""
        return self.latent_size if self.latent is not None else 0

    def __post_init__(self):
        # Motion finer than the motiongram is what version 7 adds; a box that reads
        # only up to version 6 must refuse such a voice, not play it on coarse frames.
        if self.motiongram.scale != 1 and self.format_version < SCALE_VERSION:
            object.__setattr__(self, "format_version", SCALE_VERSION)

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("notes", "noise", "latent"):   # absent where the voice has none
            if data[key] is None:
                del data[key]
        if data["motiongram"]["scale"] == 1:        # as every bundle before version 7
            del data["motiongram"]["scale"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        """Build from parsed JSON, refusing missing or mistyped keys."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: manifest is not a JSON object")
        if data.get("format") != FORMAT:
            raise BundleError(f"{where}: not a dancesampler bundle (format {data.get('format')!r})")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise BundleError(f"{where}: bundle format version {version!r} is not supported "
                              f"(this device reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        optional = {"voice", "corpus", "noise", "latent", "notes"} | {
            1: {"level", "motion_gain"}, 2: {"motion_gain"}}.get(version, set())
        if version >= 4 and data.get("voice") in ("corpus", "notes"):
            optional |= {"level", "latent_size", "style_centroids"}
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in optional]
        if missing:
            raise BundleError(f"{where}: manifest lacks {', '.join(sorted(missing))}")
        try:
            values = dict(data)
            if version < SCALE_VERSION and "scale" in data["motiongram"]:
                raise BundleError(f"{where}: motiongram.scale needs bundle format version "
                                  f"{SCALE_VERSION}, not {version}")
            values["motiongram"] = MotiongramParams(**data["motiongram"])
            values["audio"] = AudioParams(**data["audio"])
            values["input"] = TensorSpec(tuple(data["input"]["shape"]), data["input"]["dtype"])
            values["output"] = TensorSpec(tuple(data["output"]["shape"]), data["output"]["dtype"])
            if version == 1 or values.get("level") is None:
                values["level"] = None
            else:
                values["level"] = TensorSpec(tuple(data["level"]["shape"]), data["level"]["dtype"])
            values["motion_gain"] = (MotionGainParams(**data["motion_gain"]) if version >= 3
                                     else None)
            noise = data.get("noise") if version >= NOISE_VERSION else None
            values["noise"] = (TensorSpec(tuple(noise["shape"]), noise["dtype"])
                               if noise is not None else None)
            latent = data.get("latent") if version >= LATENT_VERSION else None
            values["latent"] = (TensorSpec(tuple(latent["shape"]), latent["dtype"])
                                if latent is not None else None)
            unknown = set(values) - {f.name for f in fields(cls)}
            for key in unknown:
                values.pop(key)
            manifest = cls(**values)
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed manifest ({exc})") from None
        _check_types(manifest, where)
        m = manifest.motiongram
        low, high = _SCALE_RANGE
        if not low <= m.scale <= high or m.check():
            raise BundleError(f"{where}: motiongram.scale {m.scale!r}: expected {low} to {high}, "
                              "with frames of at most 640x480")
        return manifest

    def describe(self) -> str:
        """A few readable lines for ``check-bundle``."""
        a, m = self.audio, self.motiongram
        if self.voice == "notes":
            n = self.notes
            sound = (f"voice       notes: C major pentatonic, {n['steps']} notes from MIDI "
                     f"{n['lowest']}, method {n['method']}")
        elif self.voice == "corpus":
            c = self.corpus
            sound = (f"voice       corpus: {c['grains']} grains from {len(c['takes'])} take(s), "
                     f"{c['seconds']:.1f} s of {c['sample_format']} audio, index of "
                     f"{c['dims']} dimensions")
        else:
            sound = (f"tensors     in {list(self.input.shape)} {self.input.dtype}, "
                     f"out {list(self.output.shape)} {self.output.dtype}"
                     + (f" and level {list(self.level.shape)} {self.level.dtype}"
                        if self.level else "")
                     + (f" and noise {list(self.noise.shape)} {self.noise.dtype}"
                        if self.noise else "")
                     + f", latent {self.latent_size}"
                     + (" (an output)" if self.latent else ""))
        lines = [
            f"name        {self.name} (created {self.created})",
            f"motion      {self.fps} fps, {_size(m)}, threshold {m.threshold:g}, "
            f"window {self.window_frames} frames ({self.window_frames / self.fps * 1000:.0f} ms)",
            "gain        " + (f"to {g.reference:g} over {g.time_s:g} s, at most {g.max_gain:g}x, "
                              f"floor {g.floor:g}" if (g := self.motion_gain) and g.enabled
                              else "none (motion as measured)"),
            f"audio       {a.sample_rate} Hz, segment {a.segment_samples} samples "
            f"({a.segment_samples / a.sample_rate * 1000:.0f} ms), hop {a.hop_samples}",
            sound,
        ]
        if self.style_centroids:
            lines.append(f"styles      {', '.join(sorted(self.style_centroids))}")
        for key, value in sorted(self.training.get("metrics", {}).items()):
            lines.append(f"metric      {key} = {value}")
        for name, member in sorted(self.members.items()):
            lines.append(f"member      {name} {member['bytes']} bytes sha256 {member['sha256'][:16]}…")
        return "\n".join(lines)


@dataclass(frozen=True)
class Bundle:
    """A bundle read and verified: its manifest and its members' bytes."""

    path: Path
    manifest: Manifest
    graphs: dict[str, bytes]
    """Every member but the manifest: the graph(s) of a model voice, the arrays of a
    corpus voice."""

    @property
    def performer(self) -> bytes:
        return self.graphs[PERFORMER]

    @property
    def is_corpus(self) -> bool:
        return self.manifest.voice == "corpus"

    @property
    def has_graph(self) -> bool:
        """Whether a graph makes the sound (a model voice), not numpy alone."""
        return self.manifest.voice == "model"


def write_bundle(path: str | Path, manifest: Manifest, graphs: dict[str, bytes]) -> Path:
    """Write a bundle atomically (temporary file, then rename); return its path.

    The members' checksums are computed here and stored in the manifest; the
    same inputs always give the same bytes.
    """
    path = Path(path)
    if manifest.voice == "model" and PERFORMER not in graphs:
        raise BundleError(f"{path}: a model bundle needs a {PERFORMER} graph")
    members = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
               for name, data in sorted(graphs.items())}
    manifest = replace(manifest, members=members)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            # Straight into the file: a corpus voice's audio is not held twice.
            with zipfile.ZipFile(out, "w") as archive:
                _add(archive, MANIFEST, manifest.to_json().encode())
                for name, data in sorted(graphs.items()):
                    _add(archive, name, data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle: format, manifest keys and types, members and their
    SHA-256, within the size caps."""
    path = Path(path)
    try:
        return _read_bundle(path)
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file is one line, never a traceback
        raise BundleError(f"{path}: not a readable bundle ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]})") from None


def _read_bundle(path: Path) -> Bundle:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path}: not a regular file")
    if info.st_size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: {info.st_size} bytes; a bundle is at most "
                          f"{MAX_BUNDLE_BYTES >> 20} MB")
    try:
        with open(path, "rb") as file:
            raw_file = file.read(MAX_BUNDLE_BYTES + 1)
        archive = zipfile.ZipFile(io.BytesIO(raw_file))
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: not a readable bundle ({exc})") from None
    with archive:
        names = set(archive.namelist())
        if MANIFEST not in names:
            raise BundleError(f"{path}: no {MANIFEST} inside")
        try:
            raw = json.loads(_member(archive, MANIFEST, MAX_MANIFEST_BYTES, path),
                             parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise BundleError(f"{path}: {MANIFEST} is not valid JSON "
                              f"({type(exc).__name__}: {exc})") from None
        manifest = Manifest.from_dict(raw, str(path))
        if manifest.voice == "model" and PERFORMER not in manifest.members:
            raise BundleError(f"{path}: manifest names no {PERFORMER}")
        graphs = {}
        for name, member in manifest.members.items():
            if name not in names:
                raise BundleError(f"{path}: member {name} is listed but missing")
            data = _member(archive, name, MAX_BUNDLE_BYTES if name in LARGE_MEMBERS
                           else MAX_MEMBER_BYTES, path)
            digest = hashlib.sha256(data).hexdigest()
            if digest != member.get("sha256"):
                raise BundleError(f"{path}: member {name} fails its SHA-256 check "
                                  f"(expected {str(member.get('sha256'))[:16]}…, got {digest[:16]}…)")
            graphs[name] = data
    _check_shapes(manifest, str(path))
    return Bundle(path, manifest, graphs)


def _member(archive: zipfile.ZipFile, name: str, most: int, path: Path) -> bytes:
    """A member's bytes, never more than ``most`` whatever its header claims."""
    if archive.getinfo(name).file_size > most:
        raise BundleError(f"{path}: member {name} is {archive.getinfo(name).file_size} bytes; "
                          f"at most {most} are read")
    try:
        with archive.open(name) as member:
            data = member.read(most + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
            ValueError) as exc:
        raise BundleError(f"{path}: member {name} is damaged ({type(exc).__name__}: "
                          f"{exc})") from None
    except Exception as exc:  # zlib.error and kin: still a damaged member
        raise BundleError(f"{path}: member {name} is damaged ({type(exc).__name__}: "
                          f"{exc})") from None
    if len(data) > most:
        raise BundleError(f"{path}: member {name} holds more than {most} bytes")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a manifest may hold")


def _check_types(manifest: Manifest, where: str) -> None:
    """Every manifest field of the type the format says, numbers finite, shapes
    small lists of positive integers: one line naming the first that is not."""
    def problem(key: str, value: Any, expected: str) -> BundleError:
        shown = repr(value)
        return BundleError(f"{where}: manifest {key} is {shown[:60]}; expected {expected}")

    def check(key: str, value: Any, tp: Any) -> None:
        if key == "latent_size" and manifest.voice != "model" and value == 0:
            return
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
                raise problem(key, value, "a positive integer")
        elif tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise problem(key, value, "a finite number")
        elif tp is str:
            if not isinstance(value, str):
                raise problem(key, value, "text")

    for section, obj in (("", manifest), ("motiongram.", manifest.motiongram),
                         ("audio.", manifest.audio)) + (
            (("motion_gain.", manifest.motion_gain),) if manifest.motion_gain else ()):
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            check(section + f.name, getattr(obj, f.name), hints.get(f.name))
    for name in ("input", "output", "level", "noise", "latent"):
        spec = getattr(manifest, name)
        if spec is None:
            continue
        if not 1 <= len(spec.shape) <= _MAX_RANK:
            raise problem(f"{name}.shape", list(spec.shape), f"1 to {_MAX_RANK} dimensions")
        for size in spec.shape:
            check(f"{name}.shape", size, int)
        check(f"{name}.dtype", spec.dtype, str)
    for key in ("members", "style_centroids", "training"):
        if not isinstance(getattr(manifest, key), dict):
            raise problem(key, getattr(manifest, key), "an object")
    if manifest.voice not in VOICES:
        raise problem("voice", manifest.voice, " or ".join(map(repr, VOICES)))
    if manifest.voice == "corpus" and not isinstance(manifest.corpus, dict):
        raise problem("corpus", manifest.corpus, "an object (a corpus voice's grains)")
    if manifest.voice == "notes" and not isinstance(manifest.notes, dict):
        raise problem("notes", manifest.notes, "an object (a notes voice's settings)")
    for name, member in manifest.members.items():
        if not isinstance(member, dict) or not isinstance(member.get("sha256"), str):
            raise problem(f"members.{name}", member, 'an object with a "sha256" text')
    for label, centroid in manifest.style_centroids.items():
        if not isinstance(centroid, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in centroid):
            raise problem(f"style_centroids.{label}", centroid, "a list of numbers")


def check_compatible(manifest: Manifest, *, fps: int, motiongram: MotiongramParams,
                     sample_rate: int, where: str) -> None:
    """Refuse a bundle trained with other parameters than this device runs with."""
    problems = []
    if manifest.fps != fps:
        problems.append(f"trained at {manifest.fps} fps but the camera runs at {fps} fps")
    if manifest.motiongram != motiongram:
        problems.append(f"motiongram {_params(manifest.motiongram)} differs from the "
                        f"device's {_params(motiongram)}")
    if manifest.audio.sample_rate != sample_rate:
        problems.append(f"audio at {manifest.audio.sample_rate} Hz but the device plays "
                        f"{sample_rate} Hz")
    if problems:
        raise BundleError(f"{where}: does not match this device: {'; '.join(problems)}")


def _check_shapes(manifest: Manifest, where: str) -> None:
    m, a = manifest, manifest.audio
    expected_in = (1, m.window_frames, m.motiongram.features)
    if tuple(m.input.shape) != expected_in:
        raise BundleError(f"{where}: input shape {list(m.input.shape)} should be {list(expected_in)}")
    if tuple(m.output.shape) != (1, a.segment_samples):
        raise BundleError(f"{where}: output shape {list(m.output.shape)} should be "
                          f"[1, {a.segment_samples}]")
    if m.level is not None and tuple(m.level.shape) != (1, 1):
        raise BundleError(f"{where}: level shape {list(m.level.shape)} should be [1, 1]")
    if m.noise is not None:
        if m.level is None:
            raise BundleError(f"{where}: a noise output needs a level output")
        if len(m.noise.shape) != 2 or m.noise.shape[0] != 1 \
                or not 2 <= m.noise.shape[1] <= min(MAX_NOISE_BANDS, a.segment_samples // 2):
            raise BundleError(f"{where}: noise shape {list(m.noise.shape)} should be [1, bands] "
                              f"with 2 to {min(MAX_NOISE_BANDS, a.segment_samples // 2)} bands")
    if m.latent is not None:
        if m.level is None:
            raise BundleError(f"{where}: a latent output needs a level output")
        if tuple(m.latent.shape) != (1, m.latent_size):
            raise BundleError(f"{where}: latent shape {list(m.latent.shape)} should be "
                              f"[1, latent_size] = [1, {m.latent_size}]")
    if m.motion_gain is not None:
        for f in fields(MotionGainParams):
            value, low, high = getattr(m.motion_gain, f.name), f.metadata["min"], f.metadata["max"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not low <= value <= high:
                raise BundleError(f"{where}: motion_gain.{f.name} is {value!r}; expected a "
                                  f"number from {low:g} to {high:g}")
    if a.sample_rate != a.hop_samples * m.fps:
        raise BundleError(f"{where}: hop_samples {a.hop_samples} is not one frame at "
                          f"{m.fps} fps and {a.sample_rate} Hz")
    if a.segment_samples < a.hop_samples:
        raise BundleError(f"{where}: segment_samples {a.segment_samples} is shorter than a hop")


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _size(p: MotiongramParams) -> str:
    """The motiongram's size, and the frames' where they are finer."""
    finer = f" from {p.frame_width}x{p.frame_height} frames" if p.scale != 1 else ""
    return f"{p.width}x{p.height}{finer}"


def _params(p: MotiongramParams) -> str:
    return f"{_size(p)} threshold {p.threshold:g}"
