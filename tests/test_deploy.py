"""``deploy`` and ``flash-model`` against a real sshd on loopback.

The "box" is a folder in tmp standing for ``/`` (``Box.root``), reached through
the ``sshd`` fixture (tests/sshd.py) with real ssh and rsync. Its ``systemctl``
and ``journalctl`` are stand-in scripts put first on the PATH of every command
(``Box.path_prefix``): they log each call and report the health the test chose,
per release (a release id listed in ``bad`` fails to start). The venv is made
with a quick stand-in command; nothing reaches the network, except
``test_aarch64_wheel_set_resolves``, which skips when the package index cannot
be reached.
"""

import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_tools.deploy import Box, DeployFailed, deploy, rsync_to, rsync_to_command
from firmware_tools.flash import FlashRefused, flash_model
from firmware_tools.release import build_release, pip_download_command
from firmware_tools.ssh import Remote, RemoteError
from tests.conftest import ROOT, one_line_error
from tests.sshd import require

MODEL = ROOT / "models" / "default.dsb"

SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >> {log}
rid=$(basename "$(readlink {root}/opt/dancesampler/current)")
if grep -qxF "$rid" {bad} 2>/dev/null; then health=failed; else health=active; fi
case "$1" in
  restart)
    [ "$health" = active ] && exit 0
    echo "Job for dancesampler.service failed because the control process exited with error code." >&2
    exit 1 ;;
  is-active) echo "$health"; [ "$health" = active ] ;;
  show)
    if [ "$health" = active ]; then
      printf 'ActiveState=active\nSubState=running\nStatusText=playing default (30 fps, compute 0.4 ms, 0 underruns)\n'
    else
      printf 'ActiveState=failed\nSubState=failed\nStatusText=starting: opening the camera\n'
    fi ;;
esac
exit 0
"""

JOURNALCTL = r"""#!/bin/sh
echo "journalctl $*" >> {log}
echo "Nov 21 15:00:01 box dancesampler[812]: INFO device: starting"
echo "Nov 21 15:00:02 box dancesampler[812]: dancesampler: error: camera: no Pi camera found"
echo "Nov 21 15:00:02 box systemd[1]: dancesampler.service: Failed with result 'exit-code'."
"""


@pytest.fixture
def stubs(tmp_path):
    """The box's stand-in systemctl and journalctl; returns their folder."""
    folder = tmp_path / "stub-bin"
    folder.mkdir()
    root = tmp_path / "box"
    values = {"log": shlex.quote(str(folder / "calls.log")), "root": shlex.quote(str(root)),
              "bad": shlex.quote(str(folder / "bad"))}
    for name, text in (("systemctl", SYSTEMCTL), ("journalctl", JOURNALCTL)):
        (folder / name).write_text(text.format(**values))
        (folder / name).chmod(0o755)
    (folder / "calls.log").write_text("")
    return folder


@pytest.fixture
def box(sshd, stubs, tmp_path):
    require("rsync")
    root = tmp_path / "box"
    root.mkdir()
    # The venv stand-in: quick, offline, and leaves a mark to check for.
    return Box(root=str(root), path_prefix=str(stubs), settle_s=0.2,
               make_venv="mkdir -p .venv && echo made > .venv/made",
               python=f"cd {shlex.quote(str(ROOT))} && {shlex.quote(sys.executable)}")


@pytest.fixture
def remote(sshd):
    return Remote(sshd.target, port=sshd.port, identity=sshd.identity,
                  options=sshd.client_options)


@pytest.fixture
def project(tmp_path):
    """A copy of what a release is made of, to change between releases."""
    tree = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("device", "config"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    shutil.copytree(ROOT / "systemd", tree / "systemd")
    (tree / "models").mkdir()
    shutil.copy2(MODEL, tree / "models")
    return tree


def new_release(project, tmp_path, n):
    """Release number ``n``: the project with one line of config changed."""
    config = project / "config" / "device.yaml"
    config.write_text(re.sub(r"\n# release \d+\n", "\n", config.read_text()) + f"\n# release {n}\n")
    return build_release(project, tmp_path / "built")


def calls(stubs, what="systemctl restart dancesampler"):
    """The stand-ins' calls that are ``what`` or begin with it and a space."""
    return [line for line in (stubs / "calls.log").read_text().splitlines()
            if line == what or line.startswith(what + " ")]


def current(box):
    return os.readlink(Path(box.root) / "opt/dancesampler/current")


def releases(box):
    return sorted(p.name for p in (Path(box.root) / "opt/dancesampler/releases").iterdir()
                  if not p.name.startswith("."))


def run_deploy(remote, release, box, **kwargs):
    lines = []
    result = deploy(remote, release, box, report=lines.append, **kwargs)
    return result, lines


def cli(*args):
    return subprocess.run([sys.executable, "-m", "firmware_tools", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def cli_box_args(sshd, box, port=None):
    args = [sshd.target, "--port", str(port or sshd.port), "--identity", str(sshd.identity),
            "--root", box.root, "--box-path", box.path_prefix, "--box-venv", box.make_venv,
            "--box-python", box.python, "--settle", str(box.settle_s)]
    for option in sshd.client_options:
        args += ["-o", option]
    return args



# ---- the release ------------------------------------------------------------------

def test_a_release_holds_what_the_box_runs_and_its_id_is_its_content(project, tmp_path):
    first = build_release(project, tmp_path / "a")
    again = build_release(project, tmp_path / "b")
    assert first.id == again.id and len(first.id) == 16
    names = set(first.files)
    assert {"device/__main__.py", "config/device.yaml", "systemd/dancesampler.service",
            "systemd/dancesampler-osc.service", "systemd/dancesampler-web.service",
            "systemd/dancesampler-midi.service", "models/default.dsb", "music/demo.wav", "requirements.txt"} <= names
    # The demo track a dancer can record with at once: half a minute, audible, 16-bit
    # mono at the box's rate.
    from device.audio.wav import read_wav

    track, rate = read_wav(first.path / "music/demo.wav")
    assert rate == 22050 and len(track) == 30 * rate
    assert 20 * np.log10(np.sqrt(np.mean(track ** 2))) > -30
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    pins = (first.path / "requirements.txt").read_text()
    for pin in ("numpy==1.26.4", "tflite-runtime==2.14.0", "av==16.0.1", "pyalsaaudio==0.11.0",
                "python-osc==1.10.2", "python-rtmidi==1.5.8"):
        assert pin in pins
    # gpiozero is Raspberry Pi OS's own (python3-gpiozero): none shadows it.
    assert "gpiozero" not in pins
    assert (first.path / "wheels").is_dir()
    changed = new_release(project, tmp_path, 1)
    assert changed.id != first.id


def test_aarch64_wheel_set_resolves(tmp_path):
    """Every pinned box requirement has an aarch64 / CPython 3.11 wheel on the index."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"the package index (pypi.org:443) cannot be reached here ({exc})")
    result = subprocess.run(pip_download_command(tmp_path / "wheels"), capture_output=True,
                            text=True, timeout=600)
    network = ("Failed to establish a new connection", "Temporary failure in name resolution",
               "Network is unreachable", "Read timed out", "ProxyError", "SSLError")
    if result.returncode != 0 and any(sign in result.stderr for sign in network):
        pytest.skip(f"the package index stopped answering: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = [p.name.lower() for p in (tmp_path / "wheels").glob("*.whl")]
    for name in ("numpy-1.26.4", "pyyaml-6.0.2", "tflite_runtime-2.14.0", "av-16.0.1"):
        found = [w for w in wheels if w.startswith(name)]
        assert found, f"no wheel for {name} in {wheels}"
        assert all("aarch64" in w or w.endswith("-none-any.whl") for w in found), found


# ---- deploy -----------------------------------------------------------------------

def test_first_deploy_switches_to_the_release_and_a_second_changes_nothing(
        remote, box, stubs, project, tmp_path):
    release = new_release(project, tmp_path, 1)
    state_models = Path(box.root) / "var/lib/dancesampler/models"
    state_models.mkdir(parents=True)          # made by provision
    music = Path(box.root) / "var/lib/dancesampler/music"
    music.mkdir(parents=True)
    (music / "mine.wav").write_bytes(b"the box's own")
    result, lines = run_deploy(remote, release, box)
    # The demo track joins the box's own tracks.
    assert sorted(p.name for p in music.iterdir()) == ["demo.wav", "mine.wav"]
    assert (music / "mine.wav").read_bytes() == b"the box's own"

    assert result.changed and result.release == release.id and result.previous is None
    # The release's bundles are in the box's one models folder, beside flashed ones.
    assert (state_models / "default.dsb").read_bytes() == MODEL.read_bytes()
    assert current(box) == f"releases/{release.id}"
    here = Path(box.root) / "opt/dancesampler/releases" / release.id
    for name, digest in release.files.items():
        assert hashlib.sha256((here / name).read_bytes()).hexdigest() == digest, name
    assert (here / ".venv" / "made").exists()
    assert calls(stubs) == ["systemctl restart dancesampler"]
    assert calls(stubs, "systemctl daemon-reload")
    for unit in ("dancesampler.service", "dancesampler-osc.service",
                 "dancesampler-web.service", "dancesampler-midi.service"):
        assert (Path(box.root) / "etc/systemd/system" / unit).read_bytes() == \
            (ROOT / "systemd" / unit).read_bytes()
    # The OSC and MIDI services follow the release they run from, once the show is
    # checked; the web page's waits for a password (provision sets one) and says so.
    for unit in ("dancesampler-osc", "dancesampler-midi"):
        assert calls(stubs, f"systemctl restart {unit}") == [f"systemctl restart {unit}"]
    assert not calls(stubs, "systemctl restart dancesampler-web")
    assert f"{remote}: note: the web page has no password yet, so it is off: provision " \
           "the box again to set one" in lines
    assert (Path(box.root) / "etc/dancesampler/device.yaml").exists()
    assert f"running {release.id} (active (running): playing default" in lines[-1]
    assert not [p for p in here.parent.iterdir() if p.name.startswith(".incoming")]

    again, lines = run_deploy(remote, build_release(project, tmp_path / "again"), box)
    assert not again.changed and again.release == release.id
    assert lines == [f"{remote}: already running {release.id}"]
    assert calls(stubs) == ["systemctl restart dancesampler"], "a same-release deploy restarted"
    assert current(box) == f"releases/{release.id}"


def test_a_release_that_fails_to_start_is_rolled_back(
        sshd, remote, box, stubs, project, tmp_path):
    good = new_release(project, tmp_path, 1)
    run_deploy(remote, good, box)
    bad = new_release(project, tmp_path, 2)
    (stubs / "bad").write_text(bad.id + "\n")

    with pytest.raises(DeployFailed) as failed:
        run_deploy(remote, bad, box)
    message = str(failed.value)
    first, *journal = message.splitlines()
    assert "dancesampler failed to start (failed (failed)" in first
    assert f"rolled back to {good.id}, which is running again" in first
    assert "last 3 journal lines of dancesampler:" in journal[0]
    assert any("no Pi camera found" in line for line in journal)
    assert current(box) == f"releases/{good.id}"
    assert len(calls(stubs)) == 3          # the good one, the bad one, the good one again
    assert calls(stubs, "journalctl") == ["journalctl -u dancesampler -n 20 --no-pager"]

    result = cli("deploy", *cli_box_args(sshd, box), "--no-wheels")
    # The CLI builds a release of the real tree: a third id, which starts.
    assert result.returncode == 0, result.stderr
    assert "running" in result.stdout.splitlines()[-1]


def test_a_copy_cut_off_half_way_leaves_the_old_release_running(
        remote, box, stubs, project, tmp_path):
    old = new_release(project, tmp_path, 1)
    run_deploy(remote, old, box)
    (project / "models" / "big.dsb").write_bytes(os.urandom(3_000_000))
    new = new_release(project, tmp_path, 2)
    incoming = Path(box.root) / "opt/dancesampler/releases" / f".incoming-{new.id}"
    seen = []

    def cut_off_half_way(remote, box, source, dest, args=()):
        proc = subprocess.Popen(rsync_to_command(remote, box, source, dest,
                                                 (*args, "--bwlimit=1000")),
                                start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            models = incoming / "models"
            if models.is_dir():
                seen.extend(p.name for p in models.iterdir()
                            if p.name.startswith(".big") and p.stat().st_size > 300_000)
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)      # as a power cut here would
        proc.wait(timeout=20)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_deploy(remote, new, box, rsync=cut_off_half_way)
    assert seen, "rsync never got under way"
    assert current(box) == f"releases/{old.id}"
    assert releases(box) == [old.id], "a half-copied release was put in place"
    assert incoming.is_dir() and not (incoming / "models" / "big.dsb").exists()
    assert len(calls(stubs)) == 1

    result, _ = run_deploy(remote, new, box)   # carries on, then switches
    assert result.changed and current(box) == f"releases/{new.id}"
    assert sorted(releases(box)) == sorted([old.id, new.id]) and not incoming.exists()
    assert len(calls(stubs)) == 2


def test_only_the_last_three_releases_are_kept(remote, box, stubs, project, tmp_path):
    ids = []
    for n in range(4):
        release = new_release(project, tmp_path, n)
        result, lines = run_deploy(remote, release, box)
        ids.append(release.id)
    assert result.removed == [ids[0]]
    assert f"{remote}: removed old release {ids[0]}" in lines
    assert releases(box) == sorted(ids[1:])
    assert current(box) == f"releases/{ids[-1]}"


def test_a_box_without_room_is_refused_before_copying(remote, box, stubs, project, tmp_path):
    (stubs / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available "
                              "Capacity Mounted on'\necho '/dev/root 3000000 2990000 10240 "
                              "100% /'\n")
    (stubs / "df").chmod(0o755)
    release = new_release(project, tmp_path, 1)
    with pytest.raises(RemoteError) as refused:
        run_deploy(remote, release, box)
    message = str(refused.value)
    assert "\n" not in message
    assert re.search(r"no room for release \w+ in .*: needs \d+ MB, has 10 MB", message)
    assert releases(box) == [] and not calls(stubs)


def test_unreachable_and_refused_boxes_are_one_line(sshd, box, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line_error(cli("deploy", *cli_box_args(sshd, box, port=port), "--no-wheels"),
                   "Connection refused", "is the box on")
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    args = cli_box_args(sshd, box)
    args[args.index("--identity") + 1] = str(wrong)
    one_line_error(cli("flash-model", str(MODEL), *args), "login refused")


# ---- flash-model ------------------------------------------------------------------

def test_a_good_bundle_lands_after_the_box_checked_it(remote, box):
    lines = []
    final = flash_model(remote, MODEL, box, report=lines.append)
    models = Path(box.root) / "var/lib/dancesampler/models"
    assert final == str(models / "default.dsb")
    assert (models / "default.dsb").read_bytes() == MODEL.read_bytes()
    assert list((models / ".incoming").iterdir()) == []
    assert lines[0].startswith(f"{remote}: flashed default.dsb (")


def test_a_damaged_bundle_is_refused_and_the_box_keeps_what_it_had(
        sshd, remote, box, tmp_path):
    models = Path(box.root) / "var/lib/dancesampler/models"
    flash_model(remote, MODEL, box, report=lambda line: None)
    before = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}

    damaged = tmp_path / "default.dsb"
    damaged.write_bytes(MODEL.read_bytes()[: MODEL.stat().st_size // 2])   # truncated
    error = one_line_error(cli("flash-model", str(damaged), *cli_box_args(sshd, box)),
                           "refused", "default.dsb")
    assert "not a readable bundle" in error

    def damaged_in_transit(remote, box, source, dest, args=()):
        rsync_to(remote, box, source, dest, args)
        data = bytearray(Path(dest).read_bytes())
        data[len(data) // 2] ^= 0xFF
        Path(dest).write_bytes(bytes(data))

    with pytest.raises(FlashRefused, match=r"refused default\.dsb: the copy on the box does "
                                           r"not match \(SHA-256"):
        flash_model(remote, MODEL, box, report=lambda line: None, rsync=damaged_in_transit)
    assert {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()} == before
    assert list((models / ".incoming").iterdir()) == []


def test_a_bundle_the_box_cannot_play_is_refused_by_its_check(remote, box, tmp_path):
    models = Path(box.root) / "var/lib/dancesampler/models"
    failing = Box(root=box.root, path_prefix=box.path_prefix,
                  python=f"cd {shlex.quote(str(ROOT))} && DANCESAMPLER_CONFIG=/nonexistent.yaml "
                         f"{shlex.quote(sys.executable)}")
    with pytest.raises(FlashRefused, match="check-bundle on the box said") as refused:
        flash_model(remote, MODEL, failing, report=lambda line: None)
    assert "/nonexistent.yaml" in str(refused.value) and "\n" not in str(refused.value)
    assert not (models / "default.dsb").exists()


# ---- provision --------------------------------------------------------------------

PROVISION_STUBS = {
    # Each stand-in logs its call; state lives in marker files beside them.
    "dpkg-query": 'p=$(eval echo \\${$#}); [ -e "$S/pkg-$p" ] && printf "install ok installed"',
    "apt-get": 'shift 0; for a; do case "$a" in -*|install|update) ;; *) touch "$S/pkg-$a";; '
               'esac; done',
    "apt-cache": 'true',
    "getent": '[ "$2" != gpio ] || [ -e "$S/group-gpio" ]',
    "groupadd": 'touch "$S/group-$(eval echo \\${$#})"',
    "id": '[ -e "$S/user" ]',
    "useradd": 'touch "$S/user"',
    "usermod": 'true',
    "chown": 'true',
    "python3": 'for a; do w=$a; done; touch "$w/pyalsaaudio-0.11.0-cp311-cp311-linux_aarch64.whl"',
    "systemctl": 'case "$1" in is-enabled) [ -e "$S/enabled" ];; enable) touch "$S/enabled";; '
                 'esac',
}


def test_provisioning_twice_does_each_step_once(remote, sshd, tmp_path):
    from firmware_tools.provision import provision, provision_script

    stubs = tmp_path / "provision-bin"
    stubs.mkdir()
    for name, body in PROVISION_STUBS.items():
        (stubs / name).write_text(f'#!/bin/sh\nS={shlex.quote(str(stubs))}\n'
                                  f'echo "{name} $*" >> "$S/calls.log"\n{body}\n')
        (stubs / name).chmod(0o755)
    root = tmp_path / "fresh-box"
    root.mkdir()
    box = Box(root=str(root), path_prefix=str(stubs))

    first = provision(remote, box, report=lambda line: None)
    log = (stubs / "calls.log").read_text().splitlines()
    assert any(line.startswith("apt-get install") and "python3-picamera2" in line for line in log)
    assert "groupadd --system gpio" in log
    assert any(line.startswith("useradd --system --user-group") for line in log)
    assert "systemctl enable dancesampler" in log and "systemctl daemon-reload" in log
    for unit in ("dancesampler.service", "dancesampler-osc.service",
                 "dancesampler-web.service", "dancesampler-midi.service"):
        assert (root / "etc/systemd/system" / unit).read_bytes() == \
            (ROOT / "systemd" / unit).read_bytes()
    # The page's password: a hash only, root's only, and shown once by provision.
    stored = root / "etc/dancesampler/web-password"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert "provision: web page password: set" in first
    from device.web import check_password

    hashed = stored.read_text().strip()
    assert hashed.startswith("pbkdf2-sha256$")
    for folder in ("opt/dancesampler/releases", "opt/dancesampler/wheels",
                   "var/lib/dancesampler/models", "var/lib/dancesampler/sessions",
                   "var/lib/dancesampler/music", "etc/dancesampler"):
        assert (root / folder).is_dir()
    assert "provision: building the pyalsaaudio wheel" in first

    (stubs / "calls.log").write_text("")
    second = provision(remote, box, report=lambda line: None)
    log = (stubs / "calls.log").read_text().splitlines()
    for changing in ("apt-get", "groupadd", "useradd", "systemctl enable",
                     "systemctl daemon-reload", "python3"):
        assert not [line for line in log if line.startswith(changing)], (changing, log)
    assert "provision: apt packages: all present" in second
    assert "provision: unit: unchanged" in second and "provision: OSC unit: unchanged" in second
    assert "provision: web unit: unchanged" in second
    assert "provision: web page password: present (kept)" in second
    assert stored.read_text().strip() == hashed
    said = []
    provision(remote, box, new_web_password=True, report=said.append)
    password = re.search(r"the web page's password is (\S+) \(shown only now", said[-1])[1]
    assert check_password(password, stored.read_text().strip())
    assert stored.read_text().strip() != hashed

    script = provision_script(read_only_root=True)
    assert script.startswith("set -eu") and "mountpoint -q" in script
    assert "do_overlayfs" not in provision_script()


# ---- one deploy at a time, and never left on an unchecked release ----------------

def test_a_second_deploy_is_refused_while_one_is_under_way(
        remote, box, stubs, project, tmp_path):
    import threading

    first = new_release(project, tmp_path, 1)
    copying, go_on = threading.Event(), threading.Event()

    def slow_rsync(*args, **kwargs):
        copying.set()
        go_on.wait(30)
        rsync_to(*args, **kwargs)

    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(
        result=run_deploy(remote, first, box, rsync=slow_rsync)))
    worker.start()
    try:
        assert copying.wait(30)
        second = new_release(project, tmp_path, 2)
        with pytest.raises(RemoteError) as busy:
            run_deploy(remote, second, box)
        message = str(busy.value)
        assert "\n" not in message
        assert "another deploy is under way on this box" in message
        assert "@" in message and "since" in message, "the holder is not named"
    finally:
        go_on.set()
        worker.join(60)
    assert outcome["result"][0].changed and current(box) == f"releases/{first.id}"
    result, _ = run_deploy(remote, second, box)   # the lock is free again
    assert result.changed and current(box) == f"releases/{second.id}"


def test_a_killed_deploy_never_leaves_the_lock_held(sshd, remote, box, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from firmware_tools.deploy import Box, _deploy_lock\n"
         "from firmware_tools.ssh import Remote\n"
         f"remote = Remote({sshd.target!r}, port={sshd.port}, identity={str(sshd.identity)!r}, "
         f"options={list(sshd.client_options)!r})\n"
         f"with _deploy_lock(remote, Box(root={box.root!r})):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(120)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from firmware_tools.deploy import DeployBusy, _deploy_lock
        with pytest.raises(DeployBusy):
            with _deploy_lock(remote, box):
                pass
        holder.kill()             # as a power cut or kill -9 of the deploying host would
        holder.wait(10)
        deadline = time.monotonic() + 20
        while True:
            try:
                with _deploy_lock(remote, box):
                    break
            except DeployBusy:
                assert time.monotonic() < deadline, "the lock outlived the killed deploy"
                time.sleep(0.2)
    finally:
        holder.kill()


def test_ctrl_c_in_the_health_wait_rolls_back(remote, box, stubs, project, tmp_path,
                                              monkeypatch):
    import firmware_tools.deploy as deploy_module

    good = new_release(project, tmp_path, 1)
    run_deploy(remote, good, box)
    new = new_release(project, tmp_path, 2)

    def ctrl_c(remote, box):    # pressed while the deploy watches the unit settle
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy_module, "_show", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_deploy(remote, new, box)
    monkeypatch.undo()
    assert current(box) == f"releases/{good.id}"
    assert len(calls(stubs)) == 3          # the good one, the new one, the good one again
    assert (Path(box.root) / "opt/dancesampler/releases/.good").read_text().strip() == good.id


def test_a_release_left_unchecked_is_checked_by_the_next_deploy_and_rolled_back(
        remote, box, stubs, project, tmp_path, monkeypatch):
    import firmware_tools.deploy as deploy_module

    good = new_release(project, tmp_path, 1)
    run_deploy(remote, good, box)
    bad = new_release(project, tmp_path, 2)

    def killed(remote, box):   # the deploying host died right after the switch
        raise SystemExit(137)

    monkeypatch.setattr(deploy_module, "_restart_and_check", killed)
    with pytest.raises(SystemExit):
        run_deploy(remote, bad, box)
    monkeypatch.undo()
    assert current(box) == f"releases/{bad.id}"
    (stubs / "bad").write_text(bad.id + "\n")

    # The same deploy again does not take the failing release for a running one.
    with pytest.raises(DeployFailed) as failed:
        run_deploy(remote, bad, box)
    assert f"rolled back to {good.id}, which is running again" in str(failed.value)
    assert current(box) == f"releases/{good.id}"

    # And a new release that fails goes back to the good one, not the bad.
    monkeypatch.setattr(deploy_module, "_restart_and_check", killed)
    with pytest.raises(SystemExit):
        run_deploy(remote, bad, box)
    monkeypatch.undo()
    worse = new_release(project, tmp_path, 3)
    (stubs / "bad").write_text(f"{bad.id}\n{worse.id}\n")
    with pytest.raises(DeployFailed) as failed:
        run_deploy(remote, worse, box)
    assert f"rolled back to {good.id}" in str(failed.value)
    assert current(box) == f"releases/{good.id}"


def test_make_passes_what_a_person_typed_as_arguments_never_as_shell(tmp_path):
    for name in ("ok", "ok.device", "ok.all"):   # stand for the venv being ready
        (tmp_path / name).write_text("")
    show_argv = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[2:]))'"

    def make(*args):
        result = subprocess.run(["make", "-s", "-C", str(ROOT), f"PY={show_argv}",
                                 f"VENV_OK={tmp_path / 'ok'}", f"VENV={tmp_path / 'venv'}", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        import json
        return json.loads(result.stdout.strip().splitlines()[-1])

    planted = tmp_path / "planted"
    assert make("deploy", f"PI=x; touch {planted}") == \
        ["firmware_tools", "deploy", "x;", "touch", str(planted)]
    assert make("deploy", "PI=pi@box1 pi@box2") == ["firmware_tools", "deploy", "pi@box1", "pi@box2"]
    assert make("flash-model", f"BUNDLE=it's `touch {planted}`.dsb", "PI=pi@box") == \
        ["firmware_tools", "flash-model", f"it's `touch {planted}`.dsb", "pi@box"]
    assert make("train", "NAME=a b", "CONFIG=c'd") == \
        ["train_host", "train", "--config", "c'd", "--out", "runs/a b"]
    assert not planted.exists()


def test_the_tools_look_where_the_service_keeps_takes_models_and_music(monkeypatch):
    """One home for the box's folders: what the shipped config names, resolved as
    the service resolves it (from $STATE_DIRECTORY), is where pull-data fetches
    takes, flash-model puts bundles and provision makes the folders."""
    from device.config import BOX_STATE_DIR, load_device_config, resolve_path
    from device.recorder import TakeRecorder
    from firmware_tools.flash import MODELS_DIR
    from firmware_tools.provision import provision_script
    from firmware_tools.pull import DEFAULT_REMOTE_DIR

    monkeypatch.setenv("STATE_DIRECTORY", BOX_STATE_DIR)
    cfg = load_device_config(ROOT / "config" / "device.yaml")
    takes = TakeRecorder.from_config(cfg).root          # where the record button writes
    models = resolve_path(cfg.model.models_dir)         # what the model button steps through
    music = resolve_path(cfg.recorder.music_dir)        # where track takes find their music
    assert takes == Path(BOX_STATE_DIR, "sessions") == Path(DEFAULT_REMOTE_DIR)
    assert models == Path(BOX_STATE_DIR, "models") == Path(MODELS_DIR)
    assert resolve_path(cfg.model.bundle).parent == models
    script = provision_script()
    for folder in (takes, models, music):
        assert f'"$R{folder}"' in script


def test_fleet_status_is_one_row_per_box_and_one_line_per_box_that_does_not_answer(
        remote, box, stubs, project, tmp_path):
    from firmware_tools.ssh import Remote
    from firmware_tools.status import fleet_status

    release = new_release(project, tmp_path, 1)
    run_deploy(remote, release, box)
    sessions = Path(box.root) / "var/lib/dancesampler/sessions"
    for name in ("20261204T100000Z-a", "20261204T100500Z-b"):
        (sessions / name).mkdir(parents=True)
        (sessions / name / "session.yaml").write_text("label: x\n")
    lines, errors = [], []
    nowhere = Remote("nobody@nosuchbox.invalid", connect_timeout=5)
    code = fleet_status([remote, nowhere], box, print_line=lines.append,
                        print_error=errors.append)
    assert code == 1
    assert lines[0].split() == ["box", "release", "voice", "state", "up", "takes", "last",
                                "error"]
    [row] = lines[1:]
    cells = row.split()
    assert cells[:4] == [str(remote), release.id, "default", "playing"]
    # The stand-in journal's last line (the real one is asked for error lines only).
    assert row.endswith("Failed with result 'exit-code'.") and " 2 " in row
    [error] = errors
    assert error.startswith("dancesampler: error: nobody@nosuchbox.invalid") and "\n" not in error


def test_fleet_status_names_the_kind_of_voice_a_box_plays():
    from firmware_tools.status import parse

    def voice(status):
        return parse("box", {"ActiveState": "active", "SubState": "running",
                             "StatusText": status}).voice

    assert voice("playing voice-x (corpus voice, 30 fps, compute 0.4 ms)") == "voice-x (corpus)"
    assert voice("playing tune (notes voice, 30 fps, compute 0.1 ms)") == "tune (notes)"
    assert voice("playing default (30 fps, compute 0.2 ms, 0 underruns)") == "default"
