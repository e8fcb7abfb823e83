"""The box in a container: real systemd as PID 1, the box's real folders, and
the project's own commands.

A Debian bookworm root with systemd and an OpenSSH server (built once with
debootstrap, cached under ``out/``; each run boots a fresh copy) is booted with
``systemd-nspawn --boot``. Its sshd listens on a free port of this machine; the
tests reach it as ``root@127.0.0.1`` with a key made for the run, through
``python -m firmware_tools provision`` and ``deploy`` with a real box's defaults.
The box's default ALSA device is the ``file`` PCM over ``null`` (its sound lands
in ``/run/dancesampler/sound.raw``, kept to time by ``audio.clock: system``), its
camera the synthetic dancer: the two things no container can have. pip inside
finds only the wheels and sources fetched before the tests (``python -m
tests.platform.prepare box``), so nothing reaches the network.

``make test`` runs this where it can (root, debootstrap and systemd-nspawn,
x86-64) and skips, saying why, elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_tools.deploy import DeployFailed, deploy
from firmware_tools.release import build_release
from firmware_tools.ssh import Remote
from tests.conftest import ROOT
from tests.platform.prepare import AMD64, DEST
from tests.platform.rootfs import prepared_root

pytestmark = pytest.mark.box

SOUND = "/run/dancesampler/sound.raw"
BYTES_PER_S = 22050 * 2      # the box's sample rate, mono S16
BOX_CONFIG = """camera:
  source: synthetic
audio:
  output: alsa
  clock: system
"""
ASOUND = f"""pcm.!default {{
  type file
  slave.pcm {{ type null }}
  file "{SOUND}"
  infile "/dev/zero"
  format "raw"
}}
"""


class Container:
    """One booted box: its root folder, its nspawn process, and ssh into it."""

    def __init__(self, root: Path, key: Path, port: int, log: Path):
        self.root, self.key, self.port, self.log = root, key, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def options(self) -> list[str]:
        return ["--port", str(self.port), "--identity", str(self.key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]

    def remote(self) -> Remote:
        return Remote("root@127.0.0.1", port=self.port, identity=self.key,
                      options=self.options[5::2])

    def boot(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--directory", str(self.root), "--boot",
                 "--register=no", "--keep-unit", f"--machine=dsbox{self.port}",
                 f"--bind-ro={DEST}:/srv/box-wheels"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while self.ssh("true", check=False, timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the container did not come up with ssh: {self.tail()}")
            time.sleep(0.5)

    def power_cut(self) -> None:
        """As a power cut: no shutdown, no sync; the container is gone at once."""
        self._power_off("systemctl poweroff --force --force")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._power_off("systemctl poweroff")

    def _power_off(self, command: str) -> None:
        self.ssh(command, check=False, timeout=20)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def ssh(self, command: str, *, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "BatchMode=yes",
             "-o", "ConnectTimeout=5", *self.options[4:], "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            pytest.fail(f"on the box: {command}: exit {result.returncode}: {result.stderr}")
        return result

    def unit(self) -> dict[str, str]:
        out = self.ssh("systemctl show -p ActiveState,SubState,StatusText,NRestarts,"
                       "ExecMainStartTimestampMonotonic dancesampler").stdout
        return dict(line.partition("=")[::2] for line in out.splitlines())

    def wait_playing(self, timeout: float = 90) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            unit = self.unit()
            if unit.get("ActiveState") == "active" and unit.get("StatusText", "").startswith(
                    "playing"):
                return unit
            if time.monotonic() > deadline:
                journal = self.ssh("journalctl -u dancesampler -n 20 --no-pager",
                                   check=False).stdout
                pytest.fail(f"the unit is not playing: {unit}\n{journal}")
            time.sleep(0.5)

    def sound(self, seconds: float) -> np.ndarray:
        """What reaches the box's default ALSA device over ``seconds`` from now."""
        before = int(self.ssh(f"stat -c %s {SOUND}").stdout)
        time.sleep(seconds)
        after = int(self.ssh(f"stat -c %s {SOUND}").stdout)
        raw = self.ssh(f"tail -c {after - before} {SOUND} | base64 -w0").stdout
        import base64
        return np.frombuffer(base64.b64decode(raw), "<i2")[: (after - before) // 2]

    def tail(self) -> str:
        return " / ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    if platform.machine() != "x86_64":
        pytest.skip("the box container uses x86-64 wheels: run on an x86-64 host")
    pristine = prepared_root("box")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("ssh is not installed (Debian package openssh-client)")
    if not list(AMD64.glob("tflite_runtime-*.whl")) or not list(DEST.glob("pyalsaaudio-*")):
        pytest.skip(f"{AMD64} or {DEST} is not filled: python -m tests.platform.prepare "
                    "box fetches them (make test does; it needs the package index)")
    work = tmp_path_factory.mktemp("box")
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(root)], check=True)
    key = work / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (root / "root" / ".ssh").mkdir(mode=0o700, exist_ok=True)
    shutil.copy(key.with_suffix(".pub"), root / "root" / ".ssh" / "authorized_keys")
    port = _free_port()
    (root / "etc/ssh/sshd_config.d/box.conf").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n")
    (root / "etc/hostname").write_text("box\n")
    (root / "etc/pip.conf").write_text("[global]\nno-index = true\nfind-links = /srv/box-wheels\n")
    (root / "etc/asound.conf").write_text(ASOUND)
    (root / "etc/dancesampler").mkdir(parents=True, exist_ok=True)
    # The page on a free port of loopback: the container shares this machine's network.
    web_port = _free_port()
    (root / "etc/dancesampler/device.yaml").write_text(
        f"{BOX_CONFIG}web:\n  listen: 127.0.0.1:{web_port}\n")
    # The box's own wheel folder holds, for this platform, what a Pi gets from the
    # release's aarch64 wheels (deploy installs from both folders).
    local = root / "opt/dancesampler/wheels"
    local.mkdir(parents=True)
    for wheel in AMD64.glob("*.whl"):
        shutil.copy2(wheel, local)
    container = Container(root, key, port, work / "console.log")
    container.web_port = web_port
    container.boot()
    yield container
    container.stop()


def firmware_tools(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware_tools", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def level_db(samples: np.ndarray) -> float:
    x = samples.astype(np.float64) / 32768.0
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) + 1e-12))


def test_provision_and_deploy_make_a_box_that_plays_under_systemd(box):
    provisioned = firmware_tools("provision", "root@127.0.0.1", *box.options)
    assert provisioned.returncode == 0, provisioned.stderr
    said = provisioned.stdout
    for step in ("building the pyalsaaudio wheel", "adding user dancesampler",
                 "unit: installed", "enabling the unit", "OSC unit: installed",
                 "enabling the OSC unit", "web unit: installed", "enabling the web unit",
                 "web page password: set",
                 "python3-picamera2 is not in this box's archives (not Raspberry Pi OS): "
                 "no Pi camera",
                 "python3-lgpio is not in this box's archives (not Raspberry Pi OS): "
                 "no GPIO buttons"):
        assert step in said, said
    again = firmware_tools("provision", "root@127.0.0.1", *box.options)
    assert "pyalsaaudio wheel: present" in again.stdout and "unit: unchanged" in again.stdout

    deployed = firmware_tools("deploy", "root@127.0.0.1", *box.options)
    assert deployed.returncode == 0, deployed.stderr
    last = deployed.stdout.strip().splitlines()[-1]
    assert "running" in last and "active (running): playing default" in last, last

    unit = box.wait_playing()
    assert unit["NRestarts"] == "0"
    # The OSC service is installed and enabled, and with OSC off it ran and left.
    osc = box.ssh("systemctl show -p UnitFileState,ActiveState,Result,ExecMainStatus "
                  "dancesampler-osc").stdout.split()
    assert sorted(osc) == ["ActiveState=inactive", "ExecMainStatus=0", "Result=success",
                           "UnitFileState=enabled"], osc
    sound = box.sound(3.0)
    # Kept to time by the system clock: about 3 s of sound in 3 s.
    assert 2.0 < len(sound) / (BYTES_PER_S / 2) < 4.5, f"{len(sound)} samples in 3 s"
    assert level_db(sound) > -60, "the box writes silence while it says it plays"
    # The unit's hardening holds: in the service's own mount namespace the
    # release is read-only, even to root.
    denied = box.ssh("nsenter -t $(systemctl show -p MainPID --value dancesampler) -m "
                     "touch /opt/dancesampler/current/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied.stderr
    # It never gives up restarting, and a leak cannot take the box's memory.
    limits = box.ssh("systemctl show -p StartLimitIntervalUSec,MemoryHigh,MemoryMax "
                     "dancesampler").stdout.split()
    assert sorted(limits) == [f"MemoryHigh={256 << 20}", f"MemoryMax={384 << 20}",
                              "StartLimitIntervalUSec=0"], limits


def test_the_box_keeps_its_models_and_takes_in_its_state_folder(box, tmp_path):
    # The service is given its state folder, and plays the factory bundle from there.
    environ = box.ssh("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value "
                      "dancesampler)/environ").stdout.splitlines()
    assert "STATE_DIRECTORY=/var/lib/dancesampler" in environ
    journal = box.ssh("journalctl -u dancesampler --no-pager -o cat").stdout
    assert "model:  default (/var/lib/dancesampler/models/default.dsb" in journal, journal
    for folder in ("sessions", "models", "music"):
        owner = box.ssh(f"stat -c %U /var/lib/dancesampler/{folder}").stdout.strip()
        assert owner == "dancesampler", folder
    # The release's demo track, to record with at once (track:demo.wav).
    assert "demo.wav" in box.ssh("ls /var/lib/dancesampler/music").stdout.split()

    second = tmp_path / "second.dsb"
    shutil.copy2(ROOT / "models" / "default.dsb", second)
    flashed = firmware_tools("flash-model", str(second), "root@127.0.0.1", *box.options)
    assert flashed.returncode == 0, flashed.stderr
    assert "/var/lib/dancesampler/models/second.dsb" in flashed.stdout
    listed = box.ssh("ls /var/lib/dancesampler/models").stdout.split()
    assert {"default.dsb", "second.dsb"} <= set(listed)
    # The model button's action, asked for over the control channel, reaches it.
    ctl = "cd /opt/dancesampler/current && .venv/bin/python -m device ctl"
    assert "loading the next model" in box.ssh(f"{ctl} next-model").stdout
    deadline = time.monotonic() + 20
    while "switching to default (/var/lib/dancesampler/models/second.dsb)" not in (
            journal := box.ssh("journalctl -u dancesampler -n 30 --no-pager -o cat").stdout):
        assert time.monotonic() < deadline, journal
        time.sleep(0.5)


def test_a_take_recorded_through_the_control_channel_comes_home_verified(box, tmp_path):
    ctl = "cd /opt/dancesampler/current && .venv/bin/python -m device ctl"
    started = box.ssh(f"{ctl} record")
    assert started.stdout.startswith("recording default"), started.stdout
    time.sleep(3)
    box.ssh(f"{ctl} stop")
    time.sleep(1)
    assert box.ssh(f"{ctl} status").stdout.startswith("playing default")
    # A room's setting, tried over the same channel, reaches the unit's process.
    tried = json.loads(box.ssh(f"{ctl} dynamics 1 --json").stdout)
    assert (tried["ok"], tried["dynamics"], tried["state"]) == (True, 1.0, "playing"), tried
    takes = box.ssh("ls /var/lib/dancesampler/sessions").stdout.split()
    assert len(takes) == 1, takes

    home = tmp_path / "sessions"
    pulled = firmware_tools("pull-data", "root@127.0.0.1", "--out", str(home), *box.options)
    assert pulled.returncode == 0, pulled.stderr
    from device.session import read_session
    take = read_session(home / takes[0])
    assert take.info.clean and len(take.timestamps) >= 60   # about 3 s at 30 fps


def test_a_voice_from_the_last_take_is_built_and_played_under_the_unit(box):
    """The model button's long press, over the control channel: the hardened
    service cuts the newest take (one with music, put where the box keeps its
    takes) into a corpus voice in its models folder and crossfades to it."""
    from datetime import datetime, timezone

    from device.session import SessionWriter
    from train_host.demo_data import make_demo_take

    dance = make_demo_take(8.0, seed=31)
    sessions = box.root / "var/lib/dancesampler/sessions"
    writer = SessionWriter(sessions, label="danced", fps=dance.fps,
                           sample_rate=dance.sample_rate, audio_source="test",
                           min_free_bytes=0, started=datetime.now(timezone.utc))
    for i, frame in enumerate(dance.frames):
        writer.add_frame(frame, i / dance.fps)
    writer.add_audio(dance.audio)
    writer.close()
    take = writer.path.name
    box.ssh(f"chown -R dancesampler: /var/lib/dancesampler/sessions/{take}")
    ctl = "cd /opt/dancesampler/current && .venv/bin/python -m device ctl"
    assert f"building a voice from {take}" in box.ssh(f"{ctl} voice-from-last-take").stdout
    deadline = time.monotonic() + 30
    while "(corpus voice" not in (status := box.ssh(f"{ctl} status").stdout):
        assert time.monotonic() < deadline, box.ssh(
            "journalctl -u dancesampler -n 30 --no-pager -o cat").stdout
        time.sleep(0.5)
    assert status.startswith(f"playing voice-{take} (corpus voice, 30 fps"), status
    voice = f"/var/lib/dancesampler/models/voice-{take}.dsb"
    assert box.ssh(f"stat -c %U {voice}").stdout.strip() == "dancesampler"
    assert level_db(box.sound(2.0)) > -60
    # The fleet's view of it (`make status`), beside a box that does not answer. It
    # reads the status line systemd holds, which the box renews every few seconds.
    deadline = time.monotonic() + 15
    while "(corpus voice" not in box.ssh("systemctl show -p StatusText dancesampler").stdout:
        assert time.monotonic() < deadline, "systemd's status line never named the voice"
        time.sleep(0.5)
    fleet = firmware_tools("status", "root@127.0.0.1", "nobody@nosuchbox.invalid",
                           *box.options)
    assert fleet.returncode == 1
    header, row = fleet.stdout.splitlines()
    assert header.split()[:3] == ["box", "release", "voice"]
    release = box.ssh("basename $(readlink /opt/dancesampler/current)").stdout.strip()
    assert row.split()[:5] == [f"root@127.0.0.1:{box.port}", release, f"voice-{take}",
                               "(corpus)", "playing"], row
    assert fleet.stderr.startswith("dancesampler: error: nobody@nosuchbox.invalid")
    # Back to the factory model for the tests that follow.
    box.ssh(f"rm {voice} && systemctl restart dancesampler")
    box.wait_playing()


def test_the_osc_service_sends_the_motion_and_takes_commands_under_its_own_unit(box):
    """OSC turned on in the box's config: the sound service (still without a
    network) hands its frames to the OSC unit (its own dynamic user, in the group
    dancesampler), which sends them to a python-osc server on this machine; a
    python-osc client here records, stops and deletes a take through the control
    channel."""
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import BlockingOSCUDPServer
    from pythonosc.udp_client import SimpleUDPClient

    heard: list[tuple[str, list]] = []
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: heard.append((address, list(args))))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        listen = probe.getsockname()[1]
    config = "/etc/dancesampler/device.yaml"
    ctl = "cd /opt/dancesampler/current && .venv/bin/python -m device ctl"
    sessions = "ls /var/lib/dancesampler/sessions"
    before = box.ssh(sessions).stdout.split()

    def until(condition, what, seconds=30.0):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, (what, box.ssh(
                "journalctl -u dancesampler-osc -n 20 --no-pager -o cat").stdout)
            time.sleep(0.3)

    box.ssh(f"cp {config} {config}.before && printf '%s\\n' 'osc:' "
            f"'  send_to: 127.0.0.1:{server.server_address[1]}' "
            f"'  listen: 127.0.0.1:{listen}' '  allow: 127.0.0.1' >> {config} && "
            "systemctl restart dancesampler dancesampler-osc")
    try:
        box.wait_playing()
        until(lambda: sum(a == "/wek/inputs" for a, _ in heard) >= 30, "/wek/inputs arrive")
        inputs = [args for a, args in heard if a == "/wek/inputs"]
        assert {len(args) for args in inputs} == {17}
        assert ["default", "model"] in [args for a, args in heard if a == "/dancesampler/model"]
        user = box.ssh("ps -o user=,group= -p $(systemctl show -p MainPID --value "
                       "dancesampler-osc)").stdout.split()
        assert user[0] not in ("root", "dancesampler"), user     # its own dynamic user
        assert box.ssh("stat -c %G:%a /run/dancesampler-osc/frames.sock").stdout.strip() \
            == "dancesampler:660"

        client = SimpleUDPClient("127.0.0.1", listen)
        client.send_message("/dancesampler/record", [])
        until(lambda: box.ssh(f"{ctl} status").stdout.startswith("recording"), "recording")
        until(lambda: ["started"] in [args[:1] for a, args in heard
                                     if a == "/dancesampler/take"], "the take announced")
        time.sleep(1)
        client.send_message("/dancesampler/stop", 1)
        until(lambda: box.ssh(f"{ctl} status").stdout.startswith("playing"), "stopped")
        assert len(box.ssh(sessions).stdout.split()) == len(before) + 1
        client.send_message("/dancesampler/delete-last", [])
        until(lambda: box.ssh(sessions).stdout.split() == before, "the take deleted")
        journal = box.ssh("journalctl -u dancesampler-osc --no-pager -o cat").stdout
        for said in ("osc: record from 127.0.0.1: recording default",
                     "osc: stop from 127.0.0.1: playing default",
                     "osc: delete-last from 127.0.0.1"):
            assert said in journal, journal
    finally:
        server.shutdown()
        server.server_close()
        box.ssh(f"mv {config}.before {config} && systemctl restart dancesampler "
                "dancesampler-osc")
    box.wait_playing()
    assert box.ssh("systemctl show -p NRestarts --value dancesampler-osc").stdout.strip() == "0"


def test_the_midi_service_runs_under_its_own_unit_and_says_why_it_cannot_play(box):
    """Off in the config, the MIDI unit exits cleanly; turned on in a box whose
    kernel has no ALSA sequencer (this container), it loads python-rtmidi in its
    sandbox, says in one line what is missing and tries again later, while the
    sound plays on."""
    journal = "journalctl -u dancesampler-midi --no-pager -o cat"
    assert box.ssh("systemctl is-enabled dancesampler-midi").stdout.strip() == "enabled"
    assert "midi: off: midi.enabled is false" in box.ssh(journal).stdout
    if box.ssh("test -e /dev/snd/seq && echo yes || true").stdout.strip() == "yes":
        pytest.skip("this container has an ALSA sequencer: the MIDI unit would play")
    config = "/etc/dancesampler/device.yaml"
    box.ssh(f"cp {config} {config}.before && printf '%s\\n' 'midi:' '  enabled: true' "
            f">> {config} && systemctl restart dancesampler dancesampler-midi")
    try:
        box.wait_playing()
        deadline = time.monotonic() + 30
        while "no ALSA sequencer" not in box.ssh(journal).stdout:
            assert time.monotonic() < deadline, box.ssh(journal).stdout
            time.sleep(0.3)
        said = [line for line in box.ssh(journal).stdout.splitlines() if "midi" in line]
        assert "dancesampler: error: midi: no ALSA sequencer: /dev/snd/seq is missing " \
               "(the kernel's snd-seq module is not loaded)" in said, said
        assert not [line for line in said if "Traceback" in line or "rtmidi" in line], said
        state = box.ssh("systemctl show -p ActiveState,SubState --value "
                        "dancesampler-midi").stdout.split()
        assert state in (["activating", "auto-restart"], ["failed", "failed"]), state
        assert box.ssh("systemctl is-active dancesampler").stdout.strip() == "active"
    finally:
        box.ssh(f"mv {config}.before {config} && systemctl restart dancesampler "
                "dancesampler-midi")
    box.wait_playing()


def test_the_page_is_served_by_its_own_unit_with_the_provisioned_password(box):
    """The web unit (its own dynamic user, the password's hash as a credential)
    shows the camera's picture from the sound service, refuses a wrong password,
    records, lists, downloads and deletes a take, and adds an uploaded bundle."""
    import http.client
    import json
    import re
    import urllib.parse

    said = firmware_tools("provision", "root@127.0.0.1", "--new-web-password", *box.options)
    assert said.returncode == 0, said.stderr
    password = re.search(r"the web page's password is (\S+) \(shown only now", said.stdout)[1]
    assert box.ssh("stat -c %U:%a /etc/dancesampler/web-password").stdout.strip() == "root:600"
    box.ssh("systemctl restart dancesampler-web")

    def page(method, path, body=None, **headers):
        conn = http.client.HTTPConnection("127.0.0.1", box.web_port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={k.replace("_", "-"): v
                                                            for k, v in headers.items()})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def login(word):
        return page("POST", "/login", urllib.parse.urlencode({"password": word}).encode(),
                    Content_Type="application/x-www-form-urlencoded")

    def until(condition, what, seconds=30.0):
        deadline = time.monotonic() + seconds
        while True:
            try:
                if condition():
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, (what, box.ssh(
                "journalctl -u dancesampler-web -n 20 --no-pager -o cat").stdout)
            time.sleep(0.3)

    until(lambda: page("GET", "/")[0] == 303, "the page answers")
    assert page("GET", "/api/live")[0] == 401
    assert login("not it")[0] == 401
    status, headers, _ = login(password)
    assert status == 303
    cookie = headers["Set-Cookie"].split(";")[0]

    def get(path):
        status, _, body = page("GET", path, Cookie=cookie)
        assert status == 200, (path, status, body[:200])
        return body

    def ctl(cmd, value=None):
        status, _, body = page("POST", "/api/ctl", json.dumps({"cmd": cmd, "value": value})
                               .encode(), Cookie=cookie, X_Dancesampler="1")
        assert status == 200, body
        return json.loads(body)

    pictures = []
    until(lambda: pictures.append(json.loads(get("/api/live"))["picture"]) or
          len({p["frame"] for p in pictures if p}) >= 2, "two pictures")
    seen = [p for p in pictures if p]
    assert seen[0]["grey"] != seen[-1]["grey"], "the picture does not move"
    assert json.loads(get("/api/live"))["status"]["state"] == "playing"
    user = box.ssh("ps -o user= -p $(systemctl show -p MainPID --value "
                   "dancesampler-web)").stdout.strip()
    assert user not in ("root", "dancesampler"), user

    assert ctl("record", "from the page")["ok"]
    time.sleep(1.0)
    assert ctl("stop")["ok"]
    until(lambda: any(t["name"].endswith("-from_the_page") and t["frames"] > 0 and t["clean"]
                      for t in json.loads(get("/api/takes"))), "the take listed and closed")
    name = next(t["name"] for t in json.loads(get("/api/takes"))
                if t["name"].endswith("-from_the_page"))
    tar = get(f"/takes/{name}.tar")
    assert f"{name}/audio.wav".encode() in tar and len(tar) > 10_000
    assert ctl("delete-take", name)["ok"]
    assert name not in box.ssh("ls /var/lib/dancesampler/sessions").stdout

    bundle = (ROOT / "models" / "default.dsb").read_bytes()
    status, _, body = page("POST", "/api/upload?name=uploaded.dsb", bundle, Cookie=cookie,
                           X_Dancesampler="1")
    assert status == 200 and json.loads(body)["ok"], body
    assert box.ssh("sha256sum < /var/lib/dancesampler/models/uploaded.dsb").stdout.split()[0] \
        == hashlib.sha256(bundle).hexdigest()
    assert "uploaded" in json.loads(get("/api/voices"))
    box.ssh("rm /var/lib/dancesampler/models/uploaded.dsb")
    journal = box.ssh("journalctl -u dancesampler-web --no-pager -o cat").stdout
    assert "web: refused: wrong passwords: 1 (e.g. 127.0.0.1)" in journal, journal
    assert box.ssh("systemctl show -p NRestarts --value dancesampler-web").stdout.strip() == "0"


def test_a_release_that_never_comes_up_is_rolled_back(box, tmp_path):
    good = box.ssh("readlink /opt/dancesampler/current").stdout.strip().rsplit("/", 1)[-1]
    project = tmp_path / "project"
    for name in ("device", "config", "systemd", "models"):
        shutil.copytree(ROOT / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    main = project / "device" / "__main__.py"
    main.write_text(main.read_text().replace(
        "from __future__ import annotations\n",
        'from __future__ import annotations\n\nraise SystemExit("this release cannot start")\n', 1))
    broken = build_release(project, tmp_path / "built")

    with pytest.raises(DeployFailed) as failed:
        deploy(box.remote(), broken, report=lambda line: None)
    message = str(failed.value)
    assert f"rolled back to {good}, which is running again" in message, message
    assert "this release cannot start" in message, "the journal lines are not shown"
    assert box.ssh("readlink /opt/dancesampler/current").stdout.strip().endswith(good)
    box.wait_playing()


def test_a_configured_bundle_rotted_on_the_card_gives_way_to_the_factory_model(box):
    """Bit rot in the configured bundle: after a restart the box plays the release's
    factory model, says why in its status, and has not failed a start."""
    configured = "/var/lib/dancesampler/models/default.dsb"
    box.ssh(f"cp {configured} /root/configured.dsb && "
            f"printf '\\377\\377\\377\\377' | dd of={configured} bs=1 seek=40000 "
            "conv=notrunc status=none && systemctl restart dancesampler")
    unit = box.wait_playing()
    assert f"configured model refused: {configured}" in unit["StatusText"], unit
    assert unit["NRestarts"] == "0"
    assert level_db(box.sound(2.0)) > -60
    box.ssh(f"cp /root/configured.dsb {configured} && systemctl restart dancesampler")
    assert "refused" not in box.wait_playing()["StatusText"]


# A camera that can be told to stall: frames of a moving bar, as a YUV4MPEG2 stream
# into a FIFO the service reads as its `video:` source. While the stall file
# exists it sends nothing and keeps the FIFO open, as a wedged camera driver
# would; when told to go on it starts a fresh stream (a new header) for the next
# reader.
_STALLING_CAMERA = r"""
import os, sys, time
fifo, stall = sys.argv[1], sys.argv[2]
while True:
    try:
        with open(fifo, "wb") as out:
            out.write(b"YUV4MPEG2 W64 H48 F30:1 Ip A1:1 Cmono\n")
            n, start = 0, time.monotonic()
            while not os.path.exists(stall):
                x = (2 * n) % 64
                row = bytes(255 if abs(c - x) < 6 else 0 for c in range(64))
                out.write(b"FRAME\n" + row * 48)
                out.flush()
                n += 1
                time.sleep(max(0.0, start + n / 30 - time.monotonic()))
            while os.path.exists(stall):
                time.sleep(0.1)
    except BrokenPipeError:
        time.sleep(0.2)
"""


def test_a_stalled_camera_makes_the_watchdog_restart_the_unit(box):
    """The camera stops delivering frames: the status says so, systemd's watchdog
    kills the unit and restarts it, and it plays again once frames come back."""
    fifo, stall = "/var/lib/dancesampler/camera.y4m", "/root/stall"
    box.ssh(f"mkfifo -m 0644 {fifo} && chown dancesampler {fifo} && "
            f"cat > /root/camera.py <<'EOF'\n{_STALLING_CAMERA}EOF\n"
            f"systemd-run --quiet --unit=stalling-camera python3 /root/camera.py {fifo} {stall} && "
            f"sed -i 's|source: synthetic|source: video:{fifo}|' /etc/dancesampler/device.yaml && "
            "systemctl restart dancesampler")
    try:
        unit = box.wait_playing()
        assert "video file camera.y4m" in box.ssh(
            "journalctl -u dancesampler -n 30 --no-pager -o cat").stdout
        restarts = int(unit["NRestarts"])
        box.ssh(f"touch {stall}")
        seen, deadline = set(), time.monotonic() + 40
        while int(unit["NRestarts"]) == restarts and time.monotonic() < deadline:
            time.sleep(0.5)
            unit = box.unit()
            seen.add(unit.get("StatusText", "").split(":")[0])
        assert int(unit["NRestarts"]) > restarts, f"no restart: {unit}"
        assert "camera stalled" in seen, seen
        journal = box.ssh("journalctl -u dancesampler -n 200 --no-pager -o cat").stdout
        assert "Watchdog timeout" in journal, journal[-2000:]
        box.ssh(f"rm {stall}")
        box.wait_playing()
        assert level_db(box.sound(2.0)) > -60
    finally:
        box.ssh(f"rm -f {stall}; systemctl stop stalling-camera; "
                f"sed -i 's|source: video:{fifo}|source: synthetic|' "
                "/etc/dancesampler/device.yaml; systemctl restart dancesampler", check=False)
    box.wait_playing()


def test_after_a_power_cut_the_box_plays_again_by_itself(box):
    box.power_cut()
    box.boot()
    unit = box.wait_playing()
    assert unit["NRestarts"] == "0", "it came up only after failing"
    assert level_db(box.sound(2.0)) > -60
