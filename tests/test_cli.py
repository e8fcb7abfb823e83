"""The device's command line as a person uses it: what it prints, how it fails."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np

from device.audio.wav import read_wav
from tests.conftest import ROOT, one_line_error, real_video


def device(*args, env=None):
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env)


def test_run_with_defaults_says_what_it_chose(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text(f"audio:\n  wav_path: {tmp_path / 'run.wav'}\n")
    result = device("--config", str(config), "run", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "camera: synthetic dancer" in result.stdout
    assert f"audio:  WAV file {tmp_path / 'run.wav'}" in result.stdout
    assert "model:  default" in result.stdout
    assert "played 60 frames" in result.stdout
    assert (tmp_path / "run.wav").stat().st_size == 44 + 60 * 735 * 2
    assert "WARNING" in result.stderr and "stand-in" in result.stderr


def test_check_bundle_describes_the_default_model(default_bundle):
    result = device("check-bundle")
    assert result.returncode == 0, result.stderr
    assert "30 fps, 64x48, threshold 0.05" in result.stdout
    assert "ok: " in result.stdout and "test inference" in result.stdout


def test_the_factory_model_keeps_its_int8_promises(default_bundle):
    """What make default-model must ship: the int8 graph close to the float model on
    demo takes it never trained on (at least 30 dB), the level output, and at most
    2 MB."""
    from device.bundle import read_bundle

    m = read_bundle(default_bundle).manifest
    assert m.training["metrics"]["int8_snr_db"] >= 30.0
    assert m.level is not None and m.input.dtype == m.output.dtype == m.level.dtype == "int8"
    assert default_bundle.stat().st_size <= 2 * 1024 * 1024


def test_bad_config_is_one_line_naming_every_key(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text("camera:\n  fsp: 30\naudio:\n  volume: 3\n")
    one_line_error(device("--config", str(config), "check-bundle"), str(config),
                    "camera.fsp: unknown key (did you mean 'fps'?)", "audio.volume")


def test_missing_bundle(tmp_path):
    one_line_error(device("check-bundle", str(tmp_path / "nope.dsb")), "nope.dsb: no such bundle")


def test_corrupted_bundle_is_refused(default_bundle, tmp_path):
    bad = tmp_path / "bad.dsb"
    with zipfile.ZipFile(default_bundle) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".tflite"):
                data = data[:-100] + bytes(100)          # damage the graph, keep the manifest
            dst.writestr(info, data)
    one_line_error(device("check-bundle", str(bad)), "performer.tflite fails its SHA-256 check")
    truncated = tmp_path / "truncated.dsb"
    truncated.write_bytes(default_bundle.read_bytes()[:5000])
    one_line_error(device("check-bundle", str(truncated)), "truncated.dsb: not a readable bundle")


def test_bundle_for_another_frame_rate_is_refused(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text("camera:\n  fps: 60\naudio:\n  sample_rate: 22080\n")
    one_line_error(device("--config", str(config), "check-bundle"),
                    "trained at 30 fps but the camera runs at 60 fps")


def test_unreadable_video(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00" * 4096)
    one_line_error(device("run", "--camera", f"video:{bad}", "--audio", f"wav:{tmp_path / 'x.wav'}"),
                    "clip.mp4: cannot open as a video")


def test_video_run_writes_exactly_one_hop_per_frame(tmp_path):
    clip = real_video("aist_clip.mp4")
    out = tmp_path / "clip.wav"
    result = device("run", "--camera", f"video:{clip}", "--audio", f"wav:{out}")
    assert result.returncode == 0, result.stderr
    assert "played 146 frames" in result.stdout
    assert out.stat().st_size == 44 + 146 * 735 * 2


def test_under_systemd_each_log_line_carries_its_journal_priority(tmp_path):
    """journalctl -p warning finds the warnings: stderr that is the journal gets <N> prefixes."""
    import os

    log = tmp_path / "journal"
    with open(log, "w") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        config = tmp_path / "device.yaml"
        config.write_text(f"audio:\n  wav_path: {tmp_path / 'run.wav'}\n")
        result = subprocess.run([sys.executable, "-m", "device", "--config", str(config), "run",
                                 "--seconds", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=stderr, env=env, text=True)
    assert result.returncode == 0
    lines = [line for line in log.read_text().splitlines() if "device." in line]
    assert any(line.startswith("<4>device.camera:") for line in lines)      # a warning
    assert any(line.startswith("<6>device.performance:") for line in lines)  # info
    assert not any("WARNING" in line or "INFO " in line for line in lines)


def test_record_and_sessions_use_the_state_folder_under_the_service(tmp_path):
    """With systemd's $STATE_DIRECTORY, a take goes to its sessions/ (not the
    read-only release) and the sessions command lists it there."""
    from tests.test_recorder import _write_wav

    line = _write_wav(tmp_path / "line.wav", np.zeros(22050, np.float32))
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    recorded = device("record", "--camera", "synthetic", "--audio-in", f"wav:{line}",
                      "--label", "here", "--seconds", "0.5", env=env)
    assert recorded.returncode == 0, recorded.stderr
    assert f"take:     {tmp_path / 'state' / 'sessions'}/" in recorded.stdout
    listed = device("sessions", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [take] = json.loads(listed.stdout)
    assert take["label"] == "here" and take["clean"]
    assert take["path"].startswith(str(tmp_path / "state" / "sessions"))


def test_a_failed_run_leaves_the_previous_wav_as_it_was(tmp_path):
    wav = tmp_path / "run.wav"
    assert device("run", "--seconds", "1", "--audio", f"wav:{wav}").returncode == 0
    before = wav.read_bytes()
    failed = device("run", "--seconds", "1", "--audio", f"wav:{wav}",
                    "--bundle", str(tmp_path / "missing.dsb"))
    one_line_error(failed, "no such bundle")
    assert wav.read_bytes() == before
    assert not list(tmp_path.glob(".*part"))


def test_a_wav_path_must_name_a_file_in_a_folder_that_exists(tmp_path):
    missing = device("run", "--seconds", "1", "--audio", f"wav:{tmp_path}/nope/x.wav")
    one_line_error(missing, f"the folder {tmp_path}/nope does not exist")
    assert not (tmp_path / "nope").exists()
    folder = device("run", "--seconds", "1", "--audio", f"wav:{tmp_path}")
    one_line_error(folder, "is a folder; expected a WAV file's path")


def test_seconds_must_be_above_zero(tmp_path):
    for seconds in ("0", "-1"):
        result = device("run", "--seconds", seconds, "--audio", f"wav:{tmp_path}/x.wav")
        one_line_error(result, f"--seconds must be above 0, not {seconds}")
    assert not (tmp_path / "x.wav").exists()


def test_config_and_debug_may_follow_the_command(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text(f"audio:\n  wav_path: {tmp_path / 'run.wav'}\n")
    result = device("run", "--config", str(config), "--seconds", "1")
    assert result.returncode == 0, result.stderr
    assert f"WAV file {tmp_path / 'run.wav'}" in result.stdout


def test_by_hand_a_missing_pi_camera_is_one_line_not_a_wait(tmp_path):
    result = subprocess.run([sys.executable, "-m", "device", "run", "--camera", "pi",
                             "--seconds", "1", "--audio", f"wav:{tmp_path}/x.wav"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("dancesampler: error: ")
    assert "trying again" not in result.stderr


def test_sessions_of_a_folder_that_does_not_exist_is_an_error(tmp_path):
    one_line_error(device("sessions", str(tmp_path / "nope")), "no such folder of takes")


def test_no_sound_card_is_one_line_without_alsa_lib_noise(tmp_path):
    conf = tmp_path / "asound.conf"
    conf.write_text("")   # an ALSA with no devices at all
    result = device("run", "--seconds", "1", "--audio", "alsa",
                    env={**os.environ, "ALSA_CONFIG_PATH": str(conf)})
    one_line_error(result, "ALSA device 'default': cannot open for playback")
    assert "ALSA lib" not in result.stderr


def test_host_commands_without_the_host_tools_say_what_to_install_before_any_work(
        monkeypatch, capsys, tmp_path):
    """After `make run` alone the venv has the box's packages only: a command that
    needs TensorFlow or matplotlib says so in one line, before it reads anything."""
    import importlib.util

    from train_host.__main__ import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorflow", "keras", "matplotlib")
                        else real(name, *a))
    assert main(["train", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err == ("dancesampler: error: python -m train_host train needs the host tools "
                   "(tensorflow, keras, matplotlib not installed); install them with: "
                   "make host\n")
    # evaluate needs matplotlib only for its report, and says so before scoring.
    assert main(["evaluate", "missing.dsb", "--data", str(tmp_path), "--report",
                 str(tmp_path / "report")]) == 1
    assert "evaluate needs the host tools (matplotlib not installed)" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
    # Leave-one-take-out with corpus voices needs no training stack.
    from argparse import Namespace

    from train_host.__main__ import missing_host_tools

    assert missing_host_tools(Namespace(command="crossval", voice="corpus")) == []
    assert missing_host_tools(Namespace(command="crossval", voice="model")) == [
        "tensorflow", "keras", "matplotlib"]


def test_a_run_never_replaces_an_earlier_runs_default_wav(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text(f"audio:\n  wav_path: {tmp_path / 'run.wav'}\n")
    first = device("run", "--config", str(config), "--seconds", "1")
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "run.wav").read_bytes()
    second = device("run", "--config", str(config), "--seconds", "2")
    assert second.returncode == 0, second.stderr
    assert f"WAV file {tmp_path / 'run-2.wav'}" in second.stdout
    assert (tmp_path / "run.wav").read_bytes() == before
    assert (tmp_path / "run-2.wav").stat().st_size > len(before)
    # A file named by hand is what was asked for: replaced, and the log says so.
    again = device("run", "--seconds", "1", "--audio", f"wav:{tmp_path / 'run.wav'}")
    assert again.returncode == 0, again.stderr
    assert f"{tmp_path / 'run.wav'} replaces the earlier file of that name" in again.stderr


def test_a_model_for_finer_frames_plays_on_a_box_set_for_them_and_no_other(tiny_bundle,
                                                                             tmp_path):
    import dataclasses

    from device.bundle import read_bundle, write_bundle

    bundle = read_bundle(tiny_bundle)
    m = bundle.manifest
    finer = write_bundle(tmp_path / "finer.dsb", dataclasses.replace(
        m, motiongram=dataclasses.replace(m.motiongram, scale=2)), bundle.graphs)
    config = tmp_path / "device.yaml"
    config.write_text(f"motiongram:\n  scale: 2\naudio:\n  wav_path: {tmp_path / 'run.wav'}\n")
    result = device("--config", str(config), "run", "--bundle", str(finer), "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "played 60 frames" in result.stdout
    audio, _ = read_wav(tmp_path / "run.wav")
    assert np.abs(audio).max() > 0.01                 # the dancer on 128x96 frames is heard
    refused = device("run", "--bundle", str(finer), "--seconds", "1",
                     "--audio", f"wav:{tmp_path / 'no.wav'}")
    one_line_error(refused, "finer.dsb", "64x48 from 128x96 frames threshold 0.05 differs from "
                                         "the device's 64x48 threshold 0.05")
