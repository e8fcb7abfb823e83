"""``pull-data`` against a real sshd on loopback: takes copied whole, verified, resumable.

The "box" is a folder of takes in tmp, recorded with the device's own
SessionWriter, reached through the ``sshd`` fixture (tests/sshd.py) with real
ssh and rsync. Nothing but 127.0.0.1 is used.
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from device.session import SessionWriter, read_session
from firmware_tools.pull import STAGING, PullFailed, pull
from firmware_tools.ssh import (HostUnreachable, LoginRefused, Remote, RemoteCommandFailed,
                                RemoteError)
from tests.conftest import ROOT, one_line_error
from tests.sshd import make_key, require

FPS, RATE, HOP = 30, 22050, 735
START = datetime(2026, 11, 21, 14, 30, 0, tzinfo=timezone.utc)
HOUR_AGO = time.time() - 3600


@pytest.fixture
def box(sshd, tmp_path):
    """The box's folder of takes (empty); skips without rsync."""
    require("rsync")
    root = tmp_path / "box" / "sessions"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def remote(sshd):
    return Remote(sshd.target, port=sshd.port, identity=sshd.identity,
                  options=sshd.client_options)


def record(root, label, minute, frames=60, *, stop="close", age_s=3600.0):
    """A take on the box: ``frames`` frames of noise and their audio.

    ``stop``: "close" (clean), "abort" (cut off: clean false) or None (still
    recording: the writer is returned open). Finished takes get file times
    ``age_s`` in the past, as a take recorded earlier has.
    """
    rng = np.random.default_rng(minute)
    writer = SessionWriter(root, label=label, fps=FPS, sample_rate=RATE,
                           audio_source="alsa:hw:1", started=START + timedelta(minutes=minute),
                           min_free_bytes=0)
    for i in range(frames):
        writer.add_frame(rng.integers(0, 256, (48, 64), dtype=np.uint8), i / FPS)
        writer.add_audio(rng.uniform(-0.5, 0.5, HOP).astype(np.float32))
    if stop is None:
        writer.flush()
        return writer
    writer.close() if stop == "close" else writer.abort()
    when = time.time() - age_s
    for path in [*writer.path.iterdir(), writer.path]:
        os.utime(path, (when, when))
    return writer.path


def listing(root):
    """Every file under ``root``: relative path -> (SHA-256, size, mtime in ns)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def contents(root):
    """Like ``listing`` without the times: what a byte-identical copy must match."""
    return {name: digest for name, (digest, _, _) in listing(root).items()}


def run_pull(remote, box, out, **kwargs):
    lines = []
    summary = pull(remote, str(box), out, report=lines.append, **kwargs)
    return summary, lines


def cli(*args):
    return subprocess.run([sys.executable, "-m", "firmware_tools", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def cli_ssh_args(sshd, box, out, identity=None):
    args = [sshd.target, "--port", str(sshd.port), "--identity", str(identity or sshd.identity),
            "--remote-dir", str(box), "--out", str(out)]
    for option in sshd.client_options:
        args += ["-o", option]
    return args



def flip_a_byte(path):
    """Change one byte in place, keeping size and modification time (rsync won't notice)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- pulling --------------------------------------------------------------------------

def test_first_pull_copies_every_take_byte_for_byte_and_the_second_copies_nothing(
        remote, box, tmp_path):
    takes = [record(box, "salsa", 0), record(box, "tango", 1, frames=90),
             record(box, "cut off", 2, stop="abort")]
    out = tmp_path / "host" / "sessions"
    before = listing(box)

    summary, lines = run_pull(remote, box, out)

    assert summary.pulled == [t.name for t in takes]
    assert contents(out) == contents(box)
    assert listing(box) == before, "a pull without --delete-after changed the box"
    assert not (out / STAGING).exists()
    assert [line.split()[0] for line in lines] == ["pulled"] * 3 + ["pulled"]
    assert "0:02.0 of dance" in lines[0] and "0:03.0 of dance" in lines[1]
    assert "not cleanly stopped" in lines[2]
    assert lines[-1].startswith("pulled 3 take(s) (") and str(out) in lines[-1]
    copy = read_session(out / takes[1].name)
    original = read_session(takes[1])
    assert np.array_equal(copy.frames, original.frames)
    assert np.array_equal(copy.audio, original.audio)
    # rsync -t: a take keeps its recording times here too.
    assert {n: m // 10**9 for n, (_, _, m) in listing(out).items()} == \
        {n: m // 10**9 for n, (_, _, m) in before.items()}

    again, lines = run_pull(remote, box, out)
    assert again.pulled == [] and again.here == [t.name for t in takes]
    assert lines[:3] == [f"already here {t.name}" for t in takes]
    assert "pulled 0 take(s)" in lines[-1] and "3 already here" in lines[-1]
    assert contents(out) == contents(box)
    assert listing(box) == before


def test_an_interrupted_pull_carries_on_where_it_stopped(remote, box, tmp_path, monkeypatch):
    first = record(box, "one", 0)
    big = record(box, "big", 1, frames=900)           # 2.8 MB of frames, 1.3 MB of audio
    last = record(box, "three", 2)
    out = tmp_path / "host"
    real_rsync = Remote.rsync_from
    partial_seen = []

    def cut_off_half_way(self, source, dest, args=(), *, what=None):
        if big.name not in source:
            return real_rsync(self, source, dest, args, what=what)
        # As Ctrl-C at a terminal does: SIGINT to rsync and its ssh, mid-file.
        proc = subprocess.Popen(self.rsync_command(source, dest, [*args, "--bwlimit=500"]),
                                start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            growing = [p for p in dest.iterdir() if p.name.startswith(".")
                       and p.stat().st_size > 150_000] if dest.is_dir() else []
            if growing:
                partial_seen.append(growing[0].name)
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
        raise KeyboardInterrupt

    monkeypatch.setattr(Remote, "rsync_from", cut_off_half_way)
    with pytest.raises(KeyboardInterrupt):
        run_pull(remote, box, out)
    monkeypatch.undo()

    assert partial_seen, "rsync never got under way"
    assert contents(out / first.name) == contents(first)
    assert not (out / big.name).exists(), "a half-copied take was put in place"
    kept = {p.name: p.stat().st_size for p in (out / STAGING / big.name).iterdir()}
    assert kept and all(0 < size for size in kept.values())
    assert sum(kept.values()) < sum(p.stat().st_size for p in big.iterdir())
    # What an rsync killed outright (SIGKILL, power cut here) leaves behind.
    (out / STAGING / big.name / ".frames.u8.Xy12Ab").write_bytes(b"torn")

    summary, lines = run_pull(remote, box, out)
    assert summary.here == [first.name]
    assert summary.pulled == [big.name, last.name]
    assert contents(out) == contents(box)
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, big.name, last.name])
    assert not (out / STAGING).exists()


def test_a_take_being_recorded_is_left_and_one_cut_off_long_ago_is_pulled(
        remote, box, tmp_path):
    cut_off = record(box, "power cut", 0, stop="abort")
    writer = record(box, "live", 1, stop=None)
    for other in (box / "notes", box / ".importing-x"):     # not takes: never pulled
        other.mkdir()
        (other / "readme.txt").write_text("not a take")
    headless = box / "20261121T150000Z-take"     # cut off before its header: never pulled
    headless.mkdir()
    (headless / "frames.u8").write_bytes(b"\0" * 3072)
    out = tmp_path / "host"

    summary, lines = run_pull(remote, box, out)
    assert summary.pulled == [cut_off.name]
    assert sorted(p.name for p in out.iterdir()) == [cut_off.name]
    assert summary.recording == [writer.path.name]
    assert f"skipped      {writer.path.name} (still recording" in "\n".join(lines)
    assert not (out / writer.path.name).exists()
    assert "1 skipped (still recording)" in lines[-1]

    writer.close()            # stopped cleanly: pulled at once, however recent
    summary, _ = run_pull(remote, box, out)
    assert summary.pulled == [writer.path.name]
    assert contents(out) == {name: digest for name, digest in contents(box).items()
                             if name.startswith("2026") and not name.startswith(headless.name)}


def test_one_pull_at_a_time_and_orphaned_partial_copies_are_kept(remote, box, tmp_path):
    from firmware_tools.pull import _locked

    take = record(box, "salsa", 0)
    out = tmp_path / "host"
    out.mkdir()
    with _locked(out), pytest.raises(PullFailed, match="another pull into this folder"):
        run_pull(remote, box, out)
    assert not (out / take.name).exists()

    orphan = out / STAGING / "20261101T000000Z-gone"   # its take was deleted on the box since
    orphan.mkdir(parents=True)
    (orphan / "frames.u8").write_bytes(b"x" * 3072)
    summary, lines = run_pull(remote, box, out)
    assert summary.pulled == [take.name] and summary.left_alone == [orphan.name]
    assert f"note: {orphan} is a partial copy of a take the box no longer has" in lines[1]
    assert (orphan / "frames.u8").read_bytes() == b"x" * 3072


def test_delete_after_removes_only_takes_verified_here(remote, box, tmp_path):
    pulled_before = record(box, "earlier", 0)
    out = tmp_path / "host"
    unchanged = listing(box)
    run_pull(remote, box, out)                   # without --delete-after: nothing changes
    assert listing(box) == unchanged
    new = record(box, "new", 1)
    writer = record(box, "live", 2, stop=None)
    unchanged = listing(box)

    summary, lines = run_pull(remote, box, out, delete_after=True)
    assert summary.deleted == [pulled_before.name, new.name]
    assert sorted(p.name for p in box.iterdir()) == [writer.path.name]
    assert lines[0] == f"already here {pulled_before.name}; deleted on the box"
    assert lines[1].startswith(f"pulled       {new.name} (") and lines[1].endswith(
        "; deleted on the box")
    assert contents(out / new.name) == {n.split("/", 1)[1]: d[0] for n, d in unchanged.items()
                                        if n.startswith(new.name)}
    writer.close()


def test_delete_after_keeps_a_take_whose_copy_here_no_longer_matches(remote, box, tmp_path):
    take = record(box, "salsa", 0)
    out = tmp_path / "host"
    run_pull(remote, box, out)
    flip_a_byte(out / take.name / "frames.u8")
    before = listing(box)

    with pytest.raises(PullFailed, match=rf"{take.name}: .* differs from the box's copy "
                                         r"in frames.u8; not deleting"):
        run_pull(remote, box, out, delete_after=True)
    assert listing(box) == before


def test_a_copy_that_does_not_match_is_fetched_again(remote, box, tmp_path, monkeypatch):
    take = record(box, "salsa", 0)
    out = tmp_path / "host"
    real_rsync = Remote.rsync_from
    calls = []

    def corrupt_first_copy(self, source, dest, args=(), *, what=None):
        result = real_rsync(self, source, dest, args, what=what)
        calls.append(list(args))
        if len(calls) == 1:
            flip_a_byte(dest / "audio.wav")
        return result

    monkeypatch.setattr(Remote, "rsync_from", corrupt_first_copy)
    summary, lines = run_pull(remote, box, out)
    assert len(calls) == 2 and "-I" in calls[1]
    assert summary.pulled == summary.refetched == [take.name]
    assert "copied twice: the first copy did not match" in lines[0]
    assert contents(out) == contents(box)
    assert not (out / STAGING).exists()


def test_a_copy_that_never_matches_fails_clearly_and_deletes_nothing(
        remote, box, tmp_path, monkeypatch):
    take = record(box, "salsa", 0)
    out = tmp_path / "host"
    before = listing(box)
    real_rsync = Remote.rsync_from

    def always_corrupt(self, source, dest, args=(), *, what=None):
        result = real_rsync(self, source, dest, args, what=what)
        flip_a_byte(dest / "frames.u8")
        return result

    monkeypatch.setattr(Remote, "rsync_from", always_corrupt)
    with pytest.raises(PullFailed) as failed:
        run_pull(remote, box, out, delete_after=True)
    message = str(failed.value)
    assert "\n" not in message
    assert f"{take.name}: the copy still differs from the box's in frames.u8 (SHA-256) " \
           f"after copying twice" in message
    assert not (out / take.name).exists()
    assert listing(box) == before


def test_the_command_line_pulls_and_says_what_it_did(sshd, box, tmp_path):
    takes = [record(box, "salsa", 0), record(box, "tango", 1)]
    out = tmp_path / "host"

    result = cli("pull-data", *cli_ssh_args(sshd, box, out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["pulled", t.name] for t in takes]
    assert lines[-1].startswith("pulled 2 take(s)")
    assert contents(out) == contents(box)

    result = cli("pull-data", *cli_ssh_args(sshd, box, out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [f"already here {t.name}" for t in takes]


# ---- errors ---------------------------------------------------------------------------

def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_box_is_one_line(sshd, box, tmp_path):
    port = _closed_port()
    remote = Remote(sshd.target, port=port, identity=sshd.identity, options=sshd.client_options)
    with pytest.raises(HostUnreachable) as unreachable:
        remote.run("true")
    message = str(unreachable.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message
    assert "Connection refused" in message
    assert isinstance(unreachable.value, OSError)

    args = cli_ssh_args(sshd, box, tmp_path / "host")
    args[args.index("--port") + 1] = str(port)
    one_line_error(cli("pull-data", *args), "Connection refused", "is the box on")
    assert not (tmp_path / "host").exists()


def test_a_key_the_box_does_not_know_is_login_refused(sshd, box, tmp_path):
    wrong = make_key(tmp_path / "wrong_key")
    remote = Remote(sshd.target, port=sshd.port, identity=wrong, options=sshd.client_options)
    with pytest.raises(LoginRefused) as refused:
        remote.run("true")
    assert "\n" not in str(refused.value)
    assert "did not accept the key (Permission denied (publickey))" in str(refused.value)

    one_line_error(cli("pull-data", *cli_ssh_args(sshd, box, tmp_path / "host", identity=wrong)),
                   "login refused", "Permission denied (publickey)")


def test_a_host_key_that_does_not_match_is_login_refused(sshd, tmp_path):
    other = make_key(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    key_type, key = (tmp_path / "other_host_key.pub").read_text().split()[:2]
    known.write_text(f"[{sshd.host}]:{sshd.port} {key_type} {key}\n")
    remote = Remote(sshd.target, port=sshd.port, identity=sshd.identity,
                    options=("StrictHostKeyChecking=yes", f"UserKnownHostsFile={known}"))
    with pytest.raises(LoginRefused, match="host key is unknown or has changed"):
        remote.run("true")
    assert other.exists()


def test_commands_run_on_the_box_with_their_arguments_intact(remote, box):
    result = remote.run(["printf", "%s|", "a b", "it's", "$HOME", ""])
    assert result.stdout == "a b|it's|$HOME||"
    with pytest.raises(RemoteCommandFailed) as failed:
        remote.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"],
                   what="checking the box")
    message = str(failed.value)
    assert "\n" not in message
    assert "checking the box failed (exit 3)" in message and "the real reason" in message
    assert failed.value.returncode == 3


def test_a_missing_folder_on_the_box_is_one_line(remote, box, tmp_path):
    with pytest.raises(RemoteError) as failed:
        run_pull(remote, box / "nope", tmp_path / "host")
    message = str(failed.value)
    assert "\n" not in message
    assert f"listing {box / 'nope'} failed" in message and "no such file or folder" in message


def test_two_connections_share_one_login(remote, box, sshd):
    logins_before = sshd.log.read_text().count("Accepted publickey")
    with remote.connection():
        for _ in range(3):
            assert remote.run(["echo", "hi"]).stdout == "hi\n"
    assert sshd.log.read_text().count("Accepted publickey") == logins_before + 1
    assert remote.run(["echo", "again"]).stdout == "again\n"   # without: a login of its own
