"""The config files and their schema: what a person editing device.yaml relies on."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from device.config import (PROJECT_ROOT, AudioConfig, DeviceConfig, load_config,
                           load_device_config, resolve_path, with_overrides)
from device.errors import ConfigError
from device.motiongram import MotiongramParams
from train_host.config import TrainConfig, load_train_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, schema=DeviceConfig) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, schema)
    return str(info.value)


@pytest.mark.parametrize("name, schema", [("device.yaml", DeviceConfig),
                                          ("train.yaml", TrainConfig)])
def test_shipped_yaml_spells_out_exactly_the_dataclass_defaults(name, schema):
    path = PROJECT_ROOT / "config" / name
    # Every key, every value: neither side can gain, lose or change a default alone.
    assert yaml.safe_load(path.read_text()) == dataclasses.asdict(schema())
    assert load_config(path, schema) == schema()


def test_the_shipped_fine_tuning_config_fits_the_factory_model():
    """The README's fine-tuning command: config/finetune.yaml is valid, and keeps the
    shapes of the model it fine-tunes (``--init-from models/default.dsb``)."""
    from train_host.train import Run, _check_same_model

    factory = load_config(PROJECT_ROOT / "config" / "train.yaml", TrainConfig)
    finetune = load_config(PROJECT_ROOT / "config" / "finetune.yaml", TrainConfig)
    _check_same_model(finetune, Run(PROJECT_ROOT / "models", factory, None, {}))


def test_default_loaders_read_the_shipped_files():
    assert load_device_config() == DeviceConfig()
    assert load_train_config() == TrainConfig()
    assert DeviceConfig().motiongram == MotiongramParams(64, 48, 0.05)


def test_missing_keys_take_defaults_and_empty_file_means_all_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "camera:\n  fps: 25\naudio:\n"), DeviceConfig)
    assert cfg.camera.fps == 25
    assert cfg.camera.source == "auto" and cfg.audio == AudioConfig()
    assert load_config(write(tmp_path, "# nothing set\n"), DeviceConfig) == DeviceConfig()


def test_every_mistake_is_reported_at_once_on_one_line(tmp_path):
    path = write(tmp_path, """
camera:
  source: webcam
  fsp: 30
audio:
  volume: 1.5
  period_size: many
motiongram:
  width: 4
model:
  runtime: tflite
""")
    message = error_of(path)
    assert "\n" not in message
    assert message.startswith(f"{path}: 6 problem(s): ")
    problems = message.split(": ", 2)[2].split("; ")
    assert sorted(problems) == sorted([
        "camera.source: expected 'auto', 'pi', 'synthetic' or 'video:PATH', got 'webcam'",
        "camera.fsp: unknown key (did you mean 'fps'?)",
        "audio.volume: expected a number from 0 to 1, got 1.5",
        "audio.period_size: expected an integer from 16 to 16384, got 'many'",
        "motiongram.width: expected an integer from 8 to 640, got 4",
        "model.runtime: expected one of 'auto', 'ai_edge_litert', 'tflite_runtime', "
        "got 'tflite' (did you mean 'tflite_runtime'?)",
    ])


def test_sensitivity_and_motion_gain_out_of_range_name_their_key(tmp_path):
    assert error_of(write(tmp_path, "motion: {sensitivity: 50}\n")).endswith(
        "1 problem(s): motion.sensitivity: expected a number from 0.05 to 20, got 50")
    assert error_of(write(tmp_path, "motion: {quiet_after_s: -1}\n")).endswith(
        "1 problem(s): motion.quiet_after_s: expected a number from 0 to 3600, got -1")
    assert error_of(write(tmp_path, "motion: {pause_floor_db: 70}\n")).endswith(
        "1 problem(s): motion.pause_floor_db: expected a number from 0 to 60, got 70")
    assert error_of(write(tmp_path, "motion: {dynamics_depth: 1.5}\n")).endswith(
        "1 problem(s): motion.dynamics_depth: expected a number from 0 to 1, got 1.5")
    assert error_of(write(tmp_path, "motion: {strike: 5}\n")).endswith(
        "1 problem(s): motion.strike: expected a number from 0 to 4, got 5")
    message = error_of(write(tmp_path, "motion_gain: {reference: -0.1, time_s: 0}\n"),
                       TrainConfig)
    assert "motion_gain.reference: expected a number from 0 to 1, got -0.1" in message
    assert "motion_gain.time_s: expected a number from 0.1 to 600, got 0" in message


def test_a_motion_scale_out_of_range_or_too_fine_for_a_camera_names_its_key(tmp_path):
    assert error_of(write(tmp_path, "motiongram: {scale: 8}\n")).endswith(
        "1 problem(s): motiongram.scale: expected an integer from 1 to 4, got 8")
    assert error_of(write(tmp_path, "motiongram: {scale: 4, width: 320}\n"),
                    TrainConfig).endswith(
        "1 problem(s): motiongram.scale: frames of 1280x192 (width and height times scale 4); "
        "expected at most 640x480")


def test_structure_mistakes_name_their_key(tmp_path):
    message = error_of(write(tmp_path, "camera: [1, 2]\nvideo: {}\naudio: {volum: 0.5}\n"))
    assert "camera: expected a mapping of keys, got a list" in message
    assert "video: unknown key" in message
    assert "audio.volum: unknown key (did you mean 'volume'?)" in message
    assert "3 problem(s)" in message
    assert "top level: expected a mapping of keys, got a list" in error_of(
        write(tmp_path, "- camera\n"))


@pytest.mark.parametrize("text, got", [("true", "True"), ("30.0", "30.0"), ("", "nothing")])
def test_integer_keys_refuse_bools_floats_and_blanks(tmp_path, text, got):
    message = error_of(write(tmp_path, f"camera:\n  fps: {text}\n"))
    assert f"camera.fps: expected an integer from 1 to 120, got {got}" in message


def test_float_keys_take_integers_as_floats(tmp_path):
    cfg = load_config(write(tmp_path, "audio:\n  volume: 1\n"), DeviceConfig)
    assert cfg.audio.volume == 1.0 and type(cfg.audio.volume) is float
    assert "audio.volume: expected a number from 0 to 1, got nan" in error_of(
        write(tmp_path, "audio:\n  volume: .nan\n"))


@pytest.mark.parametrize("source", ["auto", "pi", "synthetic", "video:takes/a b.mp4"])
def test_camera_sources_that_match_the_pattern(tmp_path, source):
    cfg = load_config(write(tmp_path, f"camera:\n  source: '{source}'\n"), DeviceConfig)
    assert cfg.camera.source == source


@pytest.mark.parametrize("output", ["video:", "alsa:", "wav:", "autoo"])
def test_audio_outputs_that_do_not_match_the_pattern(tmp_path, output):
    message = error_of(write(tmp_path, f"audio:\n  output: '{output}'\n"))
    assert "audio.output: expected 'auto', 'alsa', 'alsa:DEVICE' or 'wav:PATH'" in message


def test_missing_file_and_bad_yaml_name_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(missing, DeviceConfig)
    message = error_of(write(tmp_path, "camera:\n  fps: 30\n bad: [\n"))
    assert message.startswith(f"{tmp_path / 'device.yaml'}: not valid YAML (line 3, column 2: ")
    assert "\n" not in message


def test_sample_rate_must_be_a_whole_multiple_of_fps(tmp_path):
    assert load_config(write(tmp_path, "camera: {fps: 25}\n"), DeviceConfig).camera.fps == 25
    assert error_of(write(tmp_path, "camera: {fps: 60}\n")).endswith(
        ": 1 problem(s): audio.sample_rate: 22050 is not a whole multiple of camera.fps 60 "
        "(each camera frame must carry a whole number of audio samples)")
    # Cross-field checks wait until every field is valid on its own.
    message = error_of(write(tmp_path, "camera: {fps: 60}\naudio: {volume: 2}\n"))
    assert "1 problem(s): audio.volume" in message and "multiple" not in message


def test_training_checks_and_derived_sizes(tmp_path):
    data = TrainConfig().data
    assert (data.hop_samples, data.segment_samples) == (735, 2205)
    message = error_of(write(tmp_path, "data: {fps: 40, segment_seconds: 0.02}\n"), TrainConfig)
    assert "data.sample_rate: 22050 is not a whole multiple of data.fps 40" in message
    message = error_of(write(tmp_path, "data: {fps: 10, segment_seconds: 0.05}\n"), TrainConfig)
    assert "data.segment_seconds: 0.05 s (1102 samples) is shorter than one camera frame " \
           "(2205 samples at 10 fps)" in message


def test_check_in_a_nested_section_is_prefixed_with_its_key(tmp_path):
    @dataclass(frozen=True)
    class Span:
        low: int = field(default=0, metadata={"min": 0})
        """Lower end."""
        high: int = 10
        """Upper end."""

        def check(self):
            return [] if self.low < self.high else [f"low: {self.low} is not below high"]

    @dataclass(frozen=True)
    class Outer:
        span: Span = Span()
        """A span."""

    assert load_config(write(tmp_path, "span: {low: 3}\n"), Outer) == Outer(Span(3, 10))
    assert "span.low: 12 is not below high" in error_of(
        write(tmp_path, "span: {low: 12}\n"), Outer)


def test_with_overrides_replaces_and_validates():
    cfg = DeviceConfig()
    new = with_overrides(cfg, {"camera.source": "synthetic", "audio.volume": 1})
    assert new.camera.source == "synthetic" and new.audio.volume == 1.0
    assert new.camera.fps == cfg.camera.fps and cfg.camera.source == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.camera.fps = 10
    with pytest.raises(ConfigError) as info:
        with_overrides(cfg, {"camera.fps": "60", "camra.source": "pi", "camera.fps.x": 1})
    message = str(info.value)
    assert message.startswith("override: 3 problem(s): ")
    assert "camera.fps: expected an integer from 1 to 120, got '60'" in message
    assert "camra: unknown key (did you mean 'camera'?)" in message
    assert "camera.fps.x: camera.fps is a value, not a section" in message
    with pytest.raises(ConfigError, match="override: .*audio.sample_rate: 22050 is not"):
        with_overrides(cfg, {"camera.fps": 60})


def test_device_config_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DANCESAMPLER_CONFIG", str(write(tmp_path, "camera: {seed: 9}\n")))
    assert load_device_config().camera.seed == 9
    monkeypatch.setenv("DANCESAMPLER_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match="gone.yaml: no such config file"):
        load_device_config()


def test_relative_paths_resolve_from_the_project_root(tmp_path):
    assert resolve_path("models/default.dsb") == PROJECT_ROOT / "models" / "default.dsb"
    assert resolve_path(str(tmp_path)) == tmp_path
    assert (PROJECT_ROOT / "device" / "config.py").is_file()


def test_relative_paths_live_in_the_state_folder_under_the_service(monkeypatch, tmp_path):
    """On the box, systemd gives the service $STATE_DIRECTORY: takes, models and
    music are there, not in the read-only release; elsewhere, in the checkout."""
    from device.config import PROJECT_ROOT, resolve_path

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert resolve_path("sessions") == PROJECT_ROOT / "sessions"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert resolve_path("sessions") == tmp_path / "sessions"
    assert resolve_path("models/default.dsb") == tmp_path / "models" / "default.dsb"
    assert resolve_path("/srv/music") == Path("/srv/music")


def test_the_box_path_of_a_config_path_is_where_the_service_finds_it(monkeypatch):
    from device.config import BOX_STATE_DIR, box_path, resolve_path

    monkeypatch.setenv("STATE_DIRECTORY", BOX_STATE_DIR)
    for value in ("sessions", "models/default.dsb", "./music/", "/srv/music"):
        assert box_path(value) == str(resolve_path(value)), value
    assert box_path("/srv/music") == "/srv/music"
