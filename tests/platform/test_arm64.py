"""The box's platform: the release on Debian bookworm arm64, under qemu-user.

The release's own aarch64 wheel set (what ``make wheels`` fetches) is installed
offline into a bookworm arm64 root exactly as deploy installs it on a box
(``firmware_tools.deploy.DEFAULT_MAKE_VENV``), after building pyalsaaudio there
as provisioning does. Then, inside that root: the device tests that need no
hardware and no host training stack, ``check-bundle`` on the shipped bundles,
and a short ``device run`` into ALSA's ``file`` PCM over ``null``.

``make test-arm64`` installs what this needs (debootstrap, systemd-nspawn,
qemu-user-static), fetches the wheels and runs this module; ``make test`` leaves
it out (marker ``arm64``). Everything here runs in emulation: the speed figures
are qemu's, not a Pi's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from firmware_tools.deploy import DEFAULT_MAKE_VENV
from firmware_tools.provision import PYALSAAUDIO
from firmware_tools.release import DEFAULT_WHEEL_CACHE, build_release
from tests.conftest import REALDATA, ROOT
from tests.platform.prepare import DEST as TEST_WHEELS
from tests.platform.prepare import pin
from tests.platform.rootfs import check, prepared_root, run_in

pytestmark = pytest.mark.arm64

BOX = "/opt/dancesampler"
# The device tests that need neither a Pi nor TensorFlow (train_host): the box's
# own code paths. Tests in them that need the host stack skip there.
DEVICE_TESTS = ("test_audio.py", "test_audio_stream.py", "test_overlap_add.py",
                "test_engine.py", "test_session.py", "test_controls.py",
                "test_latency.py", "test_video.py", "test_noise.py")
ASOUNDRC = """pcm.!default {
  type file
  slave.pcm { type null }
  file "/tmp/box-out.raw"
  format "raw"
}
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """An arm64 bookworm root with the release installed as deploy installs it."""
    root = prepared_root("arm64")
    wheels = ROOT / DEFAULT_WHEEL_CACHE
    if not list(wheels.glob("*aarch64*.whl")):
        pytest.skip(f"no aarch64 wheels in {wheels}: run make wheels (needs PyPI)")
    alsa_source = sorted(TEST_WHEELS.glob("pyalsaaudio-*.tar.gz"))
    if not alsa_source or not all(list(TEST_WHEELS.glob(f"{name}-*.whl"))
                                  for name in ("pytest", "gpiozero")):
        pytest.skip(f"{TEST_WHEELS} lacks pytest's wheels or pyalsaaudio's source: "
                    "python -m tests.platform.prepare arm64 fetches them (make test-arm64)")
    release = build_release(ROOT, tmp_path_factory.mktemp("release"), wheels=wheels)

    # Provisioning's pyalsaaudio wheel, built once on the box from its source.
    local_wheels = root / BOX.lstrip("/") / "wheels"
    local_wheels.mkdir(parents=True, exist_ok=True)
    if not list(local_wheels.glob("pyalsaaudio-*.whl")):
        check(run_in(root, f"python3 -m pip wheel --quiet --no-deps --no-index "
                           f"--no-build-isolation /src/{alsa_source[-1].name} -w {BOX}/wheels",
                     binds=((TEST_WHEELS, "/src"),)),
              f"building {PYALSAAUDIO} in the arm64 root")

    releases = root / BOX.lstrip("/") / "releases"
    here = releases / release.id
    if not (here / ".venv" / "bin" / "python").exists():
        shutil.rmtree(releases, ignore_errors=True)
        releases.mkdir(parents=True)
        shutil.copytree(release.path, here)
        started = time.monotonic()
        venv = DEFAULT_MAKE_VENV.format(local_wheels=f"{BOX}/wheels")
        check(run_in(root, f"cd {BOX}/releases/{release.id} && {venv} && "
                           ".venv/bin/pip install --quiet --no-index --find-links /test-wheels "
                           # Raspberry Pi OS's python3-gpiozero is 2.0.1, Debian's 1.6.2:
                           # the Pi's, pinned, in place of the root's.
                           f"pytest {pin('gpiozero')}", binds=((TEST_WHEELS, "/test-wheels"),)),
              "making the release's venv in the arm64 root, as deploy does")
        print(f"arm64 venv made in {time.monotonic() - started:.0f} s")
    (root / "root").mkdir(exist_ok=True)
    (root / "root" / ".asoundrc").write_text(ASOUNDRC)
    return root, f"{BOX}/releases/{release.id}"


def python_in(box, command: str, **kwargs):
    root, release = box
    return run_in(root, f"cd {release} && .venv/bin/python {command}", **kwargs)


def test_the_release_imports_the_box_runtime_on_arm64(box):
    out = check(python_in(box, "-c 'import platform, numpy, alsaaudio, tflite_runtime, av, "
                               "pythonosc, rtmidi; "
                               "print(platform.machine(), numpy.__version__)'"),
                "importing the box's packages")
    assert out.split()[0] == "aarch64", out
    assert out.split()[1].startswith("1."), "tflite-runtime 2.14 needs numpy 1"


def test_the_device_tests_pass_on_arm64(box):
    root, _ = box
    tests = root / "opt" / "check"
    shutil.rmtree(tests, ignore_errors=True)
    tests.mkdir(parents=True)
    shutil.copytree(ROOT / "tests", tests / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "platform", "hw"))
    shutil.copy2(ROOT / "pyproject.toml", tests)
    shutil.copytree(ROOT / "models", tests / "models")
    result = python_in(box, "-m pytest -q -rs -p no:cacheprovider --rootdir /opt/check "
                            "-c /opt/check/pyproject.toml "
                            + " ".join(f"/opt/check/tests/{t}" for t in DEVICE_TESTS),
                       env={"PYTHONPATH": f"{box[1]}:/opt/check"}, timeout=3600,
                       # The real-data tests find it where they look: ../shared/realdata.
                       binds=((REALDATA, "/opt/shared/realdata"),) if REALDATA.is_dir() else ())
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    print(f"arm64 device tests: {summary}")
    check(result, "the device tests on arm64")
    assert " passed" in summary


def test_check_bundle_and_a_short_run_on_arm64(box):
    out = check(python_in(box, "-m device check-bundle"), "check-bundle on arm64")
    last = out.strip().splitlines()[-1]
    assert last.startswith("ok:") and "tflite_runtime" in last, last
    check(python_in(box, "-m device run --seconds 5 --audio wav:/root/run.wav"),
          "device run on arm64")
    root, _ = box
    import wave
    with wave.open(str(root / "root" / "run.wav")) as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        assert w.getnframes() >= 4 * w.getframerate()
    level = 20 * np.log10(np.sqrt(np.mean((frames / 32768.0) ** 2)) + 1e-12)
    assert level > -60, f"the arm64 run played {level:.1f} dBFS: silence"


def test_a_corpus_voice_is_built_and_played_on_arm64(box):
    """``device corpus`` from a 60 s take with the box's own numpy, then checked and
    played: the build time printed is qemu's, an upper bound more than a Pi's figure."""
    from tests.test_evaluate import write_demo_take

    root, _ = box
    takes = root / "root" / "corpus-takes"
    shutil.rmtree(takes, ignore_errors=True)
    (root / "root" / "voice.dsb").unlink(missing_ok=True)
    take = write_demo_take(takes, 60.0, seed=21)
    started = time.monotonic()
    check(python_in(box, f"-m device corpus /root/corpus-takes/{take.name} "
                         "--out /root/voice.dsb"), "device corpus on arm64")
    print(f"a 60 s take became a corpus voice in {time.monotonic() - started:.1f} s "
          "under qemu (the command, start to end)")
    out = check(python_in(box, "-m device check-bundle /root/voice.dsb"), "check-bundle")
    assert out.strip().splitlines()[-1].startswith("ok:") and "voice       corpus" in out
    check(python_in(box, "-m device run --bundle /root/voice.dsb --seconds 3 "
                         "--audio wav:/root/voice.wav"), "playing the voice on arm64")


def test_emulation_ratio_is_reported(box, tmp_path):
    """Not a Pi's speed: how much slower qemu runs the box's compute than this host."""
    emulated = json.loads(check(python_in(box, "-m device bench --json --frames 1000"),
                                "device bench on arm64"))
    config = tmp_path / "device.yaml"
    config.write_text("model:\n  runtime: tflite_runtime\n")
    native = json.loads(subprocess.run(
        [sys.executable, "-m", "device", "--config", str(config), "bench", "--json",
         "--frames", "1000"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    e = emulated["compute_ms"]["compute"]["median_ms"]
    n = native["compute_ms"]["compute"]["median_ms"]
    print(f"emulation ratio: arm64 under qemu {e:.3f} ms / this host {n:.3f} ms = {e / n:.1f}x "
          f"per frame ({emulated['runtime']})")
    assert emulated["runtime"] == "tflite_runtime"


@pytest.mark.parametrize("which", ["factory", "noise bands"])
def test_arm64_plays_the_same_int8_outputs_within_one_step(box, which, request, tmp_path):
    """What differs between this host and the box's platform, one graph, one
    runtime (tflite-runtime 2.14's reference kernels): counted, and bounded; for the
    factory model (its sound and latent) and for a model fine-tuned into noise bands
    (four outputs)."""
    from device.bundle import read_bundle
    from device.camera.synthetic import SyntheticDancer
    from device.engine import MotionWindow
    from device.motiongram import MotionGain, MotiongramStream

    path = ROOT / "models" / "default.dsb"
    if which == "noise bands":
        pytest.importorskip("tensorflow")
        path = request.getfixturevalue("tiny_noise_bundle")
    bundle = read_bundle(path)
    m = bundle.manifest
    dancer = SyntheticDancer(fps=m.fps, width=m.motiongram.width, height=m.motiongram.height,
                             seed=5, paced=False, seconds=30)
    stream, window = MotiongramStream(m.motiongram), MotionWindow(m.window_frames,
                                                                 m.motiongram.features)
    gain = MotionGain(m.gain, m.motiongram, fps=m.fps)
    windows = np.stack([window.push(gain.push(stream.push(dancer.read().image))).copy()
                        for _ in range(600)])
    root, _ = box
    check_dir = root / "opt" / "check"
    check_dir.mkdir(parents=True, exist_ok=True)
    np.save(check_dir / "windows.npy", windows)
    shutil.copy(path, check_dir / "model.dsb")
    shutil.copytree(ROOT / "tests", check_dir / "tests", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    check(python_in(box, "-m tests.platform.int8_outputs /opt/check/model.dsb "
                         "/opt/check/windows.npy /opt/check/arm64.npz",
                    env={"PYTHONPATH": f"{box[1]}:/opt/check"}), "int8 outputs on arm64")
    subprocess.run([sys.executable, "-m", "tests.platform.int8_outputs",
                    str(path), str(check_dir / "windows.npy"),
                    str(tmp_path / "host.npz")], cwd=ROOT, check=True, capture_output=True)
    arm, host = np.load(check_dir / "arm64.npz"), np.load(tmp_path / "host.npz")
    assert sorted(arm.files) == sorted(host.files) == sorted(
        ["shape", "level", "latent"] + (["noise"] if which == "noise bands" else []))
    for name in host.files:
        steps = np.abs(arm[name].astype(np.int32) - host[name].astype(np.int32))
        windows_differing = np.mean(steps.reshape(len(steps), -1).max(axis=1) > 0)
        print(f"arm64 against this host, {name}: {100 * np.mean(steps > 0):.2f} % of int8 "
              f"outputs differ (largest {steps.max()} step), in {100 * windows_differing:.1f} % "
              "of windows")
        assert steps.max() <= 1, f"{name}: arm64 differs by {steps.max()} int8 steps"
