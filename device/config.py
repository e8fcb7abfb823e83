"""Typed, validated settings for the device (``train_host.config`` holds training's).

Each config section is a frozen dataclass with a docstring under every field; a
field's metadata may bound it ("min", "max"), list its "choices", or give a
"pattern" it must fully match (with "pattern_help" saying it in words). The
defaults live in ``config/device.yaml`` and are mirrored here (tests keep the
two equal). Loading reports every mistake in a file at once,
as one ``ConfigError`` line, rather than stopping at the first.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import posixpath
import re
import stat
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from device.errors import ConfigError
from device.motiongram import MotiongramParams

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root: config paths that are not absolute are relative to it."""

T = TypeVar("T")
_META_KEYS = {"min", "max", "choices", "pattern", "pattern_help"}
_NOUNS = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


# ---- the schema engine ---------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read."""


class NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: no config or take needs them, and
    expanding them is how a few bytes become gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_small_yaml(path: Path, most: int) -> Any:
    """The YAML in ``path``, if it is a regular file of at most ``most`` bytes (a
    FIFO or a device is never opened, so nothing blocks), parsed without aliases.
    Raises OSError, ValueError (not a regular file, too large), yaml.YAMLError or
    RecursionError (nesting too deep)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > most:
        raise ValueError(f"{info.st_size} bytes; at most {most} are read")
    return yaml.load(path.read_bytes(), Loader=NoAliasLoader)  # noqa: S506 - a safe loader


def load_config(path: str | os.PathLike, schema_cls: type[T]) -> T:
    """Read the YAML file at ``path`` into a frozen ``schema_cls``; keys left out
    take the dataclass defaults. Raises one ConfigError listing every problem."""
    path = Path(path)
    try:
        data = read_small_yaml(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; expected a YAML config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deep)") from None
    return _validate(schema_cls, data, str(path))


def with_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """A copy of ``cfg`` with dotted keys (``"camera.fps"``) set to new values,
    checked by the same rules as a file. Values must already have their types
    (60, not "60"): command-line flags convert them as they parse."""
    data = dataclasses.asdict(cfg)
    problems = []
    for dotted, value in overrides.items():
        node, parts = data, dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                problems.append(f"{dotted}: {'.'.join(parts[:i])} is a value, not a section")
                break
            if part not in node:
                problems.append(f"{'.'.join(parts[:i + 1])}: {_unknown(part, node)}")
                break
            if i == len(parts) - 1:
                node[part] = value
            node = node[part]
    return _validate(type(cfg), data, "override", problems)


BOX_STATE_DIR = "/var/lib/dancesampler"
"""The box's own folder for takes, models and music: the unit's
``StateDirectory=dancesampler``, which systemd makes and gives the service as
``$STATE_DIRECTORY``. Deploy, provision, flash-model and pull-data use it."""


def data_home() -> Path:
    """Where relative paths in the device config are taken from: under the
    service, the state folder systemd gives it (``$STATE_DIRECTORY``; the
    release it runs from is read-only); elsewhere the project root, so ``make
    run`` and the commands on a laptop use the checkout's models and takes
    whatever the working directory."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else PROJECT_ROOT


def resolve_path(value: str) -> Path:
    """A path from the config as an absolute Path; a relative one is taken from
    ``data_home()``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else data_home() / path


def box_path(value: str) -> str:
    """Where a path from the config is on the box, as the service resolves it
    (``resolve_path`` with ``$STATE_DIRECTORY`` set to ``BOX_STATE_DIR``): what the
    tools that reach a box from another machine use (deploy, flash-model,
    pull-data, provision)."""
    return posixpath.join(BOX_STATE_DIR, posixpath.normpath(value))


def _validate(cls: type[T], data: Any, where: str, problems: list[str] | None = None) -> T:
    problems = list(problems or [])
    cfg = _section(cls, data, "", problems)
    if not problems:  # cross-field checks assume every field is well formed
        _cross_checks(cfg, "", problems)
    if problems:
        message = f"{where}: {len(problems)} problem(s): " + "; ".join(problems)
        raise ConfigError(message.replace("\n", " "))
    return cfg


def _section(cls: type, data: Any, key: str, problems: list[str]) -> Any:
    """An instance of the section ``cls`` from ``data``, or None with problems noted.
    An empty section (``camera:`` with every key commented out) means all defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{key or 'top level'}: expected a mapping of keys, got {_describe(data)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    before = len(problems)
    for name in data:
        if name not in fields:
            problems.append(f"{_join(key, name)}: {_unknown(str(name), fields)}")
    values = {name: _value(data[name], hints[name], fields[name].metadata,
                           _join(key, name), problems)
              for name in fields if name in data}
    return cls(**values) if len(problems) == before else None


def _value(value: Any, tp: Any, meta: Mapping, key: str, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(tp):
        return _section(tp, value, key, problems)
    if unknown := set(meta) - _META_KEYS:
        raise TypeError(f"config schema {key}: unknown metadata {sorted(unknown)}")
    ok, converted = _convert(value, tp, meta)
    if not ok:  # name the value as written (2, not the 2.0 it became)
        hint = ""
        if "choices" in meta and isinstance(value, str):
            hint = _suggest(value, [str(c) for c in meta["choices"]])
        problems.append(f"{key}: expected {_expected(tp, meta)}, got {_describe(value)}{hint}")
    return converted


def _convert(value: Any, tp: Any, meta: Mapping) -> tuple[bool, Any]:
    """(whether value is a valid tp within meta's limits, value converted to tp)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool or tp is str:
        ok = isinstance(value, tp)
    elif tp is int:  # bool is an int subclass, and 30.0 is not an int: refuse both
        ok = is_number and isinstance(value, int)
    elif tp is float:  # refuses nan, inf and ints too big for a float
        ok = is_number and abs(value) <= sys.float_info.max
        value = float(value) if ok else value
    else:
        raise TypeError(f"config schema: unsupported field type {tp!r}")
    if ok and "min" in meta:
        ok = value >= meta["min"]
    if ok and "max" in meta:
        ok = value <= meta["max"]
    if ok and "choices" in meta:
        ok = value in meta["choices"]
    if ok and "pattern" in meta:
        ok = re.fullmatch(meta["pattern"], value) is not None
    return ok, value


def _cross_checks(cfg: Any, key: str, problems: list[str]) -> None:
    """Run ``check()`` on every section, innermost first; a section's problems
    name keys relative to it, so they are prefixed with the section's own key."""
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(sub := getattr(cfg, f.name)):
            _cross_checks(sub, _join(key, f.name), problems)
    if hasattr(cfg, "check"):
        problems.extend(_join(key, p) for p in cfg.check())


def _expected(tp: Any, meta: Mapping) -> str:
    if "pattern_help" in meta:
        return meta["pattern_help"]
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    noun, lo, hi = _NOUNS[tp], _number(meta.get("min")), _number(meta.get("max"))
    if lo and hi:
        return f"{noun} from {lo} to {hi}"
    return f"{noun} of at least {lo}" if lo else f"{noun} of at most {hi}" if hi else noun


def _number(bound: int | float | None) -> str:
    """A bound as a person writes it: 100000 not 1e+05, 0.001 not 0.0010."""
    return "" if bound is None else str(bound) if isinstance(bound, int) else f"{bound:g}"


def _describe(value: Any) -> str:
    """What was found, short: containers by kind, scalars as written (quoted text)."""
    kind = {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value))
    text = kind or repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(name: str, known: typing.Iterable[str]) -> str:
    known = list(known)
    return "unknown key" + (_suggest(name, known) or f" (known keys: {', '.join(known)})")


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, on one line (PyYAML's own message spans several)."""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def whole_multiple(rate_key: str, rate: int, fps_key: str, fps: int) -> list[str]:
    if rate % fps == 0:
        return []
    return [f"{rate_key}: {rate} is not a whole multiple of {fps_key} {fps} "
            "(each camera frame must carry a whole number of audio samples)"]


# ---- the device ----------------------------------------------------------------

_PATH = {"pattern": r"\S.*", "pattern_help": "a path"}


@dataclass(frozen=True)
class CameraConfig:
    """Where frames come from, and how often."""

    source: str = field(default="auto", metadata={
        "pattern": r"auto|pi|synthetic|video:.+",
        "pattern_help": "'auto', 'pi', 'synthetic' or 'video:PATH'"})
    """'auto' (the Pi camera if present, else the synthetic dancer), 'pi',
    'synthetic', or 'video:PATH' for a video file."""
    fps: int = field(default=30, metadata={"min": 1, "max": 120})
    """Camera frames per second."""
    seed: int = field(default=1, metadata={"min": 0})
    """Seed of the synthetic dancer's motion: the same seed gives the same dance."""


@dataclass(frozen=True)
class AudioConfig:
    """Where the sound goes, and how it is buffered."""

    output: str = field(default="auto", metadata={
        "pattern": r"auto|alsa(:.+)?|wav:.+",
        "pattern_help": "'auto', 'alsa', 'alsa:DEVICE' or 'wav:PATH'"})
    """'auto' (ALSA if there is a sound card, else a WAV file at wav_path; decided
    once at start, and always the card under systemd), 'alsa' (the default card),
    'alsa:DEVICE', or 'wav:PATH'."""
    sample_rate: int = field(default=22050, metadata={"min": 8000, "max": 96000})
    """Audio samples per second; a whole multiple of camera.fps."""
    volume: float = field(default=0.8, metadata={"min": 0, "max": 1})
    """Master volume, 0 (silent) to 1 (full scale)."""
    period_size: int = field(default=128, metadata={"min": 16, "max": 16384})
    """ALSA frames per period: smaller means less delay and more risk of underruns."""
    periods: int = field(default=2, metadata={"min": 2, "max": 64})
    """ALSA periods in the buffer; the buffer is period_size * periods frames
    (128 * 2 at 22050 Hz is 12 ms: the sound card's share of the delay)."""
    margin_ms: float = field(default=3.0, metadata={"min": 0, "max": 500})
    """Silence put ahead of the sound at start (on top of the ALSA buffer) so that
    a frame arriving this late still finds sound queued. Each frame is heard
    ALSA buffer + margin after it is made."""
    queue_hops: int = field(default=8, metadata={"min": 2, "max": 64})
    """Most frames of sound that may wait for the sound card; past that, new
    frames are dropped so the delay cannot grow."""
    fade_ms: float = field(default=30.0, metadata={"min": 1, "max": 1000})
    """Fade in at start, fade out at stop and whenever generation falls behind."""
    limiter_threshold: float = field(default=0.9, metadata={"min": 0.1, "max": 1.0})
    """Level above which the limiter bends peaks down so nothing reaches full scale."""
    wav_path: str = field(default="out/run.wav", metadata=_PATH)
    """Where the sound is written when output is 'auto' and there is no sound card."""
    clock: str = field(default="auto", metadata={"choices": ("auto", "card", "system")})
    """What keeps the sound to time: 'card' (the ALSA device's own clock: its
    blocking writes), 'system' (this computer's clock: for an ALSA device with
    none of its own, such as the file PCM over null), 'auto' (the card's for an
    ALSA device, the system's for a WAV file)."""


@dataclass(frozen=True)
class ModelConfig:
    """Which model plays, and how it runs."""

    bundle: str = field(default="models/default.dsb", metadata=_PATH)
    """The model bundle that plays at start."""
    models_dir: str = field(default="models", metadata=_PATH)
    """Folder of bundles that the model button steps through."""
    runtime: str = field(default="auto", metadata={
        "choices": ("auto", "ai_edge_litert", "tflite_runtime")})
    """TFLite runtime: 'auto' takes whichever is installed, LiteRT first."""
    threads: int = field(default=1, metadata={"min": 1, "max": 4})
    """CPU threads for the interpreter."""


PIN_FACTORIES = ("auto", "mock", "lgpio", "rpigpio", "pigpio", "native")
"""'auto' (gpiozero's own choice, honouring $GPIOZERO_PIN_FACTORY) and the names
of gpiozero's pin factories; 'mock' simulates the pins."""

_PIN = {"pattern": r"(GPIO|BCM|BOARD|WPI)\d{1,2}|J8:\d{1,2}|\d{1,2}",
        "pattern_help": "a pin name such as 'GPIO17' (Broadcom number) or 'BOARD11' "
                        "(header pin)"}


@dataclass(frozen=True)
class ControlsConfig:
    """The dancers' buttons and the status light."""

    enabled: bool = True
    """False leaves the GPIO pins alone: no buttons and no status light."""
    record_pin: str = field(default="GPIO17", metadata=_PIN)
    """Record button, wired from the pin to ground (the internal pull-up is used):
    a short press starts or stops a take, a long press deletes the last take."""
    model_pin: str = field(default="GPIO27", metadata=_PIN)
    """Model button, wired from the pin to ground: each press plays the next model."""
    led_pin: str = field(default="GPIO22", metadata=_PIN)
    """Status light, lit when the pin is high."""
    long_press_s: float = field(default=2.0, metadata={"min": 0.5, "max": 10})
    """Seconds the record button must be held to delete the last take."""
    bounce_s: float = field(default=0.05, metadata={"min": 0, "max": 0.5})
    """Seconds a button's contacts take to settle; a press or release shorter than
    this is contact bounce and is ignored."""
    pin_factory: str = field(default="auto", metadata={"choices": PIN_FACTORIES})
    """gpiozero pin library: 'auto' (gpiozero's choice, honouring
    $GPIOZERO_PIN_FACTORY; an error, so no buttons, where none works), 'lgpio',
    'rpigpio', 'pigpio', 'native', or 'mock' (simulated pins, only when asked)."""

    def check(self) -> list[str]:
        """Problems no single field shows: one pin given two jobs."""
        seen: dict[str, str] = {}
        problems = []
        for key in ("record_pin", "model_pin", "led_pin"):
            name = getattr(self, key)
            # GPIO17, BCM17 and 17 are one pin; gpiozero itself catches the
            # header-numbered aliases (BOARD11) when the pins are claimed.
            number = re.fullmatch(r"(?:GPIO|BCM)?(\d+)", name)
            pin = f"GPIO{int(number[1])}" if number else name
            if pin in seen:
                problems.append(f"{key}: {name} is already the {seen[pin]}")
            seen.setdefault(pin, key)
        return problems


@dataclass(frozen=True)
class ServiceConfig:
    """Running unattended under systemd."""

    stall_s: float = field(default=3.0, metadata={"min": 0.5, "max": 60})
    """Seconds without a camera frame or an audio write before the box counts as
    stalled: it stops feeding systemd's watchdog and says why in its status."""
    status_every_s: float = field(default=5.0, metadata={"min": 1, "max": 3600})
    """Seconds between the status lines that `systemctl status` shows."""
    camera_retry_max_s: float = field(default=30.0, metadata={"min": 1, "max": 3600})
    """Longest wait between tries to open a camera that is absent at start."""
    sound_retry_max_s: float = field(default=30.0, metadata={"min": 1, "max": 3600})
    """Longest wait between tries to open a sound card that is absent at start
    (under systemd; a run by hand reports it at once)."""


@dataclass(frozen=True)
class MotionConfig:
    """How the box reads the dancer in its room."""

    sensitivity: float = field(default=1.0, metadata={"min": 0.05, "max": 20.0})
    """Multiplies the motion gain: above 1 the box plays louder and busier for the
    same dance, below 1 calmer. The gain already brings a far and a close dancer
    to the same level; this is for the room's taste."""
    quiet_after_s: float = field(default=5.0, metadata={"min": 0.0, "max": 3600.0})
    """Seconds without motion after which the sound fades out (over 2 s), until the
    next move brings it back; 0 never fades. A model fine-tuned on real takes
    without ``training.dynamics_weight`` plays a still room nearly as loud as a
    dance (``device.engine.QuietWhenStill``)."""
    pause_floor_db: float = field(default=18.0, metadata={"min": 0.0, "max": 60.0})
    """While a dance goes on, a pause in it plays at most this many dB under the
    median level of the last 10 s (lifted by up to 24 dB); 0 lets a pause fall to
    whatever the model plays for stillness (``device.engine.Dynamics``)."""
    dynamics_depth: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    """How far the sound's level swings with the dance around its median of the
    last 10 s, as a share of the model's own swing: 1 plays the model's level as
    it is, 0.5 half its distance from that median, 0 holds it there
    (``device.engine.Dynamics``)."""
    strike: float = field(default=1.0, metadata={"min": 0.0, "max": 4.0})
    """How loud a model's sound is struck where the dancer stops between moves: a
    burst of noise this many times the sound's level, gone within 0.1 s; 0
    strikes nothing. A notes or corpus voice strikes there itself and is left as
    it is (``device.engine.Strikes``)."""


@dataclass(frozen=True)
class CorpusConfig:
    """A corpus voice: grains of recorded takes chosen by motion (``device.corpus``)."""

    max_seconds: float = field(default=600.0, metadata={"min": 5, "max": 3600})
    """Most seconds of take audio a voice keeps; longer material is shortened, each
    take by the same share. 600 s of int16 audio at 22050 Hz is 26 MB."""
    min_seconds: float = field(default=5.0, metadata={"min": 1, "max": 600})
    """A take (or takes) shorter than this is refused as a voice."""
    sample_format: str = field(default="int16", metadata={"choices": ("int16", "mulaw")})
    """How the grains' audio is kept: 16-bit, or 8-bit mu-law (half the size, a
    faint hiss under quiet passages)."""
    dims: int = field(default=24, metadata={"min": 2, "max": 128})
    """Dimensions of the motion index (principal components of the motion windows)."""
    continuity: float = field(default=0.5, metadata={"min": 0, "max": 10})
    """How much farther (as a share of the nearest grain's distance) the grain that
    follows the one playing may be and still be chosen: 0 always jumps to the
    nearest, larger values keep the recorded music running longer. At a stop
    between the dancer's moves (a motion beat) a fresh grain with an attack is
    taken whatever this says."""
    leveling: float = field(default=0.75, metadata={"min": 0, "max": 1})
    """How far each grain is brought to the takes' overall level: 0 plays grains as
    recorded, 1 every grain equally loud (silence is never lifted)."""


_SEND_TO = {"pattern": r"|(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}",
            "pattern_help": "'' (off) or 'HOST:PORT' (e.g. '192.168.1.20:6448'; "
                            "an IPv6 address in brackets)"}
_LISTEN = {"pattern": r"|(\[[0-9A-Fa-f:.]+\]|[0-9.]+):\d{1,5}",
           "pattern_help": "'' (off) or 'ADDRESS:PORT' (e.g. '0.0.0.0:9000', '[::]:9000')"}


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``) as (host, port), the brackets taken off."""
    host, _, port = value.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def networks(value: str) -> list[str]:
    """The addresses and networks of an allowlist: words split at spaces and commas."""
    return [word for word in re.split(r"[\s,]+", value) if word]


@dataclass(frozen=True)
class OscConfig:
    """OSC over the network, spoken by its own small service (``python -m device
    osc``, docs/osc.md); the sound service never touches the network, it only
    hands each frame's motion to that service over a local socket."""

    send_to: str = field(default="", metadata=_SEND_TO)
    """'HOST:PORT' that each frame's motion is sent to as OSC over UDP (Wekinator
    listens on 6448); '' sends nothing (and the sound service publishes nothing)."""
    motiongram: bool = False
    """Also send each frame's whole motiongram (/dancesampler/motiongram)."""
    listen: str = field(default="", metadata=_LISTEN)
    """'ADDRESS:PORT' on which OSC commands are taken ('0.0.0.0:9000': from every
    network); '' takes none."""
    allow: str = field(default="127.0.0.1", metadata={
        "pattern": r"[0-9A-Fa-f:./,\s]*", "pattern_help": "IP addresses or networks "
        "(e.g. '127.0.0.1 192.168.1.0/24'), separated by spaces or commas"})
    """Senders whose commands are taken: IP addresses or networks, separated by
    spaces or commas; a message from anyone else is ignored and counted."""

    def check(self) -> list[str]:
        """Ports in range, a listening address that is an IP address, an allowlist
        that parses."""
        import ipaddress

        problems = []
        for key in ("send_to", "listen"):
            value = getattr(self, key)
            if value and not 1 <= host_port(value)[1] <= 65535:
                problems.append(f"{key}: port {host_port(value)[1]} is not from 1 to 65535")
        if self.listen:
            try:
                ipaddress.ip_address(host_port(self.listen)[0])
            except ValueError:
                problems.append(f"listen: {host_port(self.listen)[0]!r} is not an IP address")
        for word in networks(self.allow):
            try:
                ipaddress.ip_network(word, strict=False)
            except ValueError:
                problems.append(f"allow: {word!r} is not an IP address or network")
        return problems


@dataclass(frozen=True)
class WebConfig:
    """The technician's page, served by its own small service (``python -m device
    web``, docs/web.md); the sound service only hands it each frame and the
    camera's picture over a local socket."""

    listen: str = field(default="0.0.0.0:8080", metadata=_LISTEN)
    """'ADDRESS:PORT' the page is served on ('0.0.0.0:8080': every IPv4 network);
    '' turns the page off (and the sound service publishes nothing for it).
    Nothing but the login page is served without the password set at provision."""
    upload_max_mb: int = field(default=64, metadata={"min": 1, "max": 1024})
    """Largest bundle the page takes, in megabytes."""

    def check(self) -> list[str]:
        """A port in range and a listening address that is an IP address."""
        import ipaddress

        if not self.listen:
            return []
        host, port = host_port(self.listen)
        problems = [] if 1 <= port <= 65535 else [f"listen: port {port} is not from 1 to 65535"]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problems.append(f"listen: {host!r} is not an IP address")
        return problems


@dataclass(frozen=True)
class MidiConfig:
    """The box as a MIDI source on the ALSA sequencer, through its own small service
    (``python -m device midi``, docs/midi.md); the sound service only hands it each
    frame's motion over a local socket."""

    enabled: bool = False
    """Whether the box appears as a MIDI source at all."""
    port: str = field(default="dancesampler", metadata={
        "pattern": r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,31}",
        "pattern_help": "a name of 1 to 32 letters, digits, spaces, '_', '.' or '-'"})
    """Name of the sequencer client and its port, as other programs list it."""
    channel: int = field(default=1, metadata={"min": 1, "max": 16})
    """MIDI channel of the notes and controllers, 1 to 16."""
    notes: bool = True
    """Send the notes voice's notes (docs/notes.md) as well as the controllers."""


_AUDIO_IN = {"pattern": r"alsa(:.+)?|wav:.+|track:.+",
             "pattern_help": "'alsa', 'alsa:DEVICE', 'wav:PATH' or 'track:PATH'"}


@dataclass(frozen=True)
class RecorderConfig:
    """Recording takes: where they go and where their sound comes from."""

    sessions_dir: str = field(default="sessions", metadata=_PATH)
    """Folder the takes are written to."""
    music_dir: str = field(default="music", metadata=_PATH)
    """Folder of tracks for 'track:NAME' (any audio file PyAV reads; a path that exists as
    given is used as is)."""
    audio_in: str = field(default="alsa", metadata=_AUDIO_IN)
    """Sound of a take: 'alsa' (the default capture device), 'alsa:DEVICE',
    'track:NAME' (the box plays the track and records it with the frames), or
    'wav:PATH' (a file standing in for the line input)."""
    min_free_mb: int = field(default=200, metadata={"min": 0, "max": 1_000_000})
    """Megabytes the card must keep free; below it a take stops (cleanly)."""
    queue_frames: int = field(default=120, metadata={"min": 2, "max": 10_000})
    """Frames that may wait for the writer; past that, frames are dropped and counted."""
    capture_periods: int = field(default=16, metadata={"min": 2, "max": 1024})
    """ALSA periods (of audio.period_size) in the capture buffer. Capture delay
    does not matter, overruns do: 16 x 128 at 22050 Hz rides out 93 ms stalls."""
    track_cushion_ms: float = field(default=100.0, metadata={"min": 0, "max": 1000})
    """Extra track queued ahead of the sound output in track mode, so a late
    camera frame does not leave a gap in the music."""
    camera_delay_ms: float = field(default=0.0, metadata={"min": 0, "max": 500})
    """How long before its earliest delivery a camera frame was exposed (about a
    frame on the Pi camera); taken off every frame's moment in alsa and track
    takes. Measure it with a clap in front of the camera (docs/session.md)."""


@dataclass(frozen=True)
class DeviceConfig:
    """Everything the box reads from ``config/device.yaml``."""

    camera: CameraConfig = CameraConfig()
    """The camera."""
    motiongram: MotiongramParams = MotiongramParams()
    """How frames become motion features; must match the bundle's."""
    motion: MotionConfig = MotionConfig()
    """How the box reads the dancer in its room."""
    audio: AudioConfig = AudioConfig()
    """Sound output."""
    model: ModelConfig = ModelConfig()
    """The model and its runtime."""
    controls: ControlsConfig = ControlsConfig()
    """The dancers' buttons and the status light."""
    service: ServiceConfig = ServiceConfig()
    """Running unattended under systemd."""
    recorder: RecorderConfig = RecorderConfig()
    """Recording takes: where they go and where their sound comes from."""
    corpus: CorpusConfig = CorpusConfig()
    """Corpus voices built from takes."""
    osc: OscConfig = OscConfig()
    """OSC out and in, through the OSC service (docs/osc.md)."""
    web: WebConfig = WebConfig()
    """The technician's page, through the web service (docs/web.md)."""
    midi: MidiConfig = MidiConfig()
    """The box as a MIDI source, through the MIDI service (docs/midi.md)."""

    def check(self) -> list[str]:
        return whole_multiple("audio.sample_rate", self.audio.sample_rate,
                               "camera.fps", self.camera.fps)


def load_device_config(path: str | os.PathLike | None = None) -> DeviceConfig:
    """The device config from ``path``, else from $DANCESAMPLER_CONFIG, else from
    ``config/device.yaml`` in the project root."""
    if path is None:
        path = os.environ.get("DANCESAMPLER_CONFIG") or PROJECT_ROOT / "config" / "device.yaml"
    return load_config(path, DeviceConfig)
