"""Pulling recorded takes from a box onto this machine (``make pull-data``).

Every take the box has and this machine lacks is copied with rsync into
``OUT/.pulling/<take>/``, checked file by file against SHA-256 sums computed on
the box, and only then renamed into ``OUT/<take>/`` in one step. So a take in
``OUT`` is always whole and verified, and a pull that was cut off (Ctrl-C, the
box unplugged, Wi-Fi gone) keeps what it had copied: the next pull carries on
from there.

This never changes anything on the box, except with ``delete_after``, and then
it removes only takes whose every byte it has just verified against the copy
here, and only if the box's files have not changed since. A take that is still
being recorded (not cleanly stopped and written to in the last seconds) is left
for a later pull; one that was cut off by a power failure long ago is pulled, as
it reads back up to its last second.

On the box this needs ``python3`` (standard library only: the box runs Python
anyway) and ``rsync``; here it needs ``ssh`` and ``rsync``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from device.config import DeviceConfig, box_path
from device.errors import SessionError
from device.session import fsync_dir, is_take_name, session_info
from firmware_tools.ssh import HostUnreachable, LoginRefused, Remote, RemoteError

log = logging.getLogger(__name__)

DEFAULT_REMOTE_DIR = box_path(DeviceConfig().recorder.sessions_dir)
"""Where the box keeps its takes (``recorder.sessions_dir`` in its state folder)."""
STAGING = ".pulling"
QUIET_S = 10.0
"""A take not cleanly stopped counts as still recording if written to this recently.
The recorder syncs its files every second, so ten quiet seconds mean it is gone."""
_CHUNK = 1 << 20


class PullFailed(RemoteError):
    """Some takes could not be copied and verified; the others were."""


# Runs on the box with `python3 -c`: standard library only, since the box's copy
# of this project may live anywhere, or be an older release. Prints JSON.
_BOX_SCRIPT = r"""
import hashlib, json, os, sys, time
mode, root = sys.argv[1], sys.argv[2]

def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(2)

def files(take):
    found = {}
    for entry in os.scandir(take):
        if entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            found[entry.name] = [st.st_size, st.st_mtime_ns]
    return found

try:
    if mode == "list":
        takes = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            info = None
            try:
                with open(os.path.join(entry.path, "session.yaml"), "rb") as f:
                    info = f.read(65536).decode("utf-8", "replace")
            except FileNotFoundError:
                pass
            takes.append({"name": entry.name, "files": files(entry.path), "info": info,
                          "dir_mtime_ns": entry.stat(follow_symlinks=False).st_mtime_ns})
        json.dump({"now_ns": time.time_ns(), "takes": takes}, sys.stdout)
    elif mode == "hash":
        take = os.path.join(root, sys.argv[3])
        sums = {}
        for name, stat in files(take).items():
            h = hashlib.sha256()
            with open(os.path.join(take, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            sums[name] = h.hexdigest()
        json.dump(sums, sys.stdout)
    elif mode == "delete":
        take = os.path.join(root, sys.argv[3])
        expected = json.load(sys.stdin)
        now = files(take)
        if set(now) != set(expected) or any(now[n] != expected[n] for n in now):
            fail(take + ": changed since it was verified; not deleting")
        if any(not e.is_file(follow_symlinks=False) for e in os.scandir(take)):
            fail(take + ": holds something that is not a file; not deleting")
        # session.yaml first, as device.session.delete_session does: a delete cut
        # off half way leaves a plainly broken take, not a plausible short one.
        for name in sorted(now, key=lambda n: n != "session.yaml"):
            os.unlink(os.path.join(take, name))
        os.rmdir(take)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        json.dump({"deleted": sys.argv[3]}, sys.stdout)
except FileNotFoundError as exc:
    fail("%s: no such file or folder on the box" % (exc.filename,))
except PermissionError as exc:
    fail("%s: permission denied on the box" % (exc.filename,))
except OSError as exc:
    fail("%s: %s" % (exc.filename or root, exc.strerror or exc))
"""


@dataclass(frozen=True)
class BoxTake:
    """A take folder as the box listed it."""

    name: str
    files: dict[str, tuple[int, int]]
    """Regular file name -> (size in bytes, modification time in ns)."""
    clean: bool | None
    """session.yaml's ``clean``; None when there is no readable session.yaml."""
    newest_ns: int
    """Latest modification time of the folder or any file in it (box clock)."""

    def recording(self, now_ns: int, quiet_s: float = QUIET_S) -> bool:
        """Still being written: not marked clean and touched within ``quiet_s``."""
        return not self.clean and (now_ns - self.newest_ns) < quiet_s * 1e9


@dataclass
class PullSummary:
    """What one pull did, take by take."""

    out: Path
    pulled: list[str] = field(default_factory=list)
    here: list[str] = field(default_factory=list)
    recording: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    refetched: list[str] = field(default_factory=list)
    bytes: int = 0

    def line(self) -> str:
        parts = [f"pulled {len(self.pulled)} take(s) ({_mb(self.bytes)}) into {self.out}"]
        if self.here:
            parts.append(f"{len(self.here)} already here")
        if self.recording:
            parts.append(f"{len(self.recording)} skipped (still recording)")
        if self.differs:
            parts.append(f"{len(self.differs)} skipped (a different copy is here)")
        if self.failed:
            parts.append(f"{len(self.failed)} FAILED")
        if self.deleted:
            parts.append(f"deleted {len(self.deleted)} from the box")
        return "; ".join(parts)


def pull(remote: Remote, remote_dir: str = DEFAULT_REMOTE_DIR, out: str | os.PathLike = "sessions",
         *, delete_after: bool = False, report: Callable[[str], None] = print,
         quiet_s: float = QUIET_S) -> PullSummary:
    """Copy the box's new takes into ``out``, verified; see the module docstring.

    Calls ``report`` with one line per take and a summary line. Raises
    ``HostUnreachable`` / ``LoginRefused`` when the box cannot be used at all, and
    ``PullFailed`` at the end when some takes could not be copied and verified.
    """
    out = Path(out)
    remote_dir = remote_dir.rstrip("/") or "/"
    summary = PullSummary(out=out)
    # Log in and list first, so that a box that cannot be reached leaves no trace here.
    with remote.connection():
        now_ns, takes = list_box(remote, remote_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PullFailed(f"{out}: cannot make the folder for takes ({exc.strerror})") from None
        with _locked(out):
            _pull_takes(remote, remote_dir, out, takes, now_ns, summary, report,
                        delete_after=delete_after, quiet_s=quiet_s)
    report(summary.line())
    if summary.failed:
        name, reason = summary.failed[0]
        more = f" (and {len(summary.failed) - 1} more)" if len(summary.failed) > 1 else ""
        raise PullFailed(f"{len(summary.failed)} take(s) not pulled{more}; first: {reason}")
    return summary


def _pull_takes(remote: Remote, remote_dir: str, out: Path, takes: list[BoxTake], now_ns: int,
                summary: PullSummary, report: Callable[[str], None], *, delete_after: bool,
                quiet_s: float) -> None:
    for take in takes:
        try:
            _one_take(remote, remote_dir, out, take, now_ns, summary, report,
                      delete_after=delete_after, quiet_s=quiet_s)
        except (HostUnreachable, LoginRefused):
            raise            # every other take would fail the same way
        except OSError as exc:   # RemoteError, or this machine's disk
            reason = str(exc) if isinstance(exc, RemoteError) else \
                f"{take.name}: {exc.filename or out}: {exc.strerror or exc}"
            summary.failed.append((take.name, reason))
            report(f"FAILED       {take.name}: {reason}")
    _tidy_staging(out, {take.name for take in takes}, summary, report)


def list_box(remote: Remote, remote_dir: str) -> tuple[int, list[BoxTake]]:
    """The box's clock (ns) and its take folders, named like a take or holding session.yaml."""
    data = _box(remote, "list", remote_dir, what=f"listing {remote_dir}")
    takes = []
    for entry in data["takes"]:
        name, info = entry["name"], entry["info"]
        if info is None:
            # Not a take (list_sessions leaves such folders out too), or a headless
            # one: cut off before its session.yaml was written, nothing to bring home.
            if is_take_name(name):
                log.warning("take %s: left on the box: it has no session.yaml (cut off "
                            "as it started)", name)
            continue
        files = {n: (int(size), int(mtime)) for n, (size, mtime) in entry["files"].items()}
        newest = max([int(entry["dir_mtime_ns"]), *(mtime for _, mtime in files.values())])
        takes.append(BoxTake(name=name, files=files, clean=_clean_flag(info), newest_ns=newest))
    return int(data["now_ns"]), takes


def box_sums(remote: Remote, remote_dir: str, name: str) -> dict[str, str]:
    """SHA-256 of every file of take ``name``, computed on the box."""
    return _box(remote, "hash", remote_dir, name, what=f"checksumming {name} on the box")


def local_sums(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file in ``folder``."""
    sums = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(block)
            sums[path.name] = digest.hexdigest()
    return sums


def mismatches(box: dict[str, str], here: dict[str, str]) -> list[str]:
    """The file names whose SHA-256 differs, or that only one side has."""
    return sorted(name for name in box.keys() | here.keys() if box.get(name) != here.get(name))


# ---- one take ----------------------------------------------------------------------

def _one_take(remote: Remote, remote_dir: str, out: Path, take: BoxTake, now_ns: int,
              summary: PullSummary, report: Callable[[str], None], *, delete_after: bool,
              quiet_s: float) -> None:
    dest = out / take.name
    if dest.exists() or dest.is_symlink():
        here = {p.name: p.stat().st_size for p in dest.iterdir()
                if p.is_file() and not p.is_symlink()} if dest.is_dir() else None
        if here != {n: size for n, (size, _) in take.files.items()}:
            summary.differs.append(take.name)
            report(f"skipped      {take.name} ({dest} exists and differs from the box's copy; "
                   f"left both alone)")
            return
        summary.here.append(take.name)
        if not delete_after:
            report(f"already here {take.name}")
            return
        # Deleting needs proof that the copy here is this take, byte for byte, now.
        bad = mismatches(box_sums(remote, remote_dir, take.name), local_sums(dest))
        if bad:
            raise PullFailed(f"{take.name}: {dest} differs from the box's copy in "
                             f"{_files(bad)}; not deleting it on the box")
        _delete_on_box(remote, remote_dir, take)
        summary.deleted.append(take.name)
        report(f"already here {take.name}; deleted on the box")
        return
    if take.recording(now_ns, quiet_s):
        summary.recording.append(take.name)
        report(f"skipped      {take.name} (still recording; pull it again once it has stopped)")
        return

    stage = out / STAGING / take.name
    stage.mkdir(parents=True, exist_ok=True)
    source = posixpath.join(remote_dir, take.name) + "/"
    refetched = False
    for attempt in (1, 2):
        # -d: the take's files, not any sub-folders; --delete: drop stale files in
        # the staging copy; --partial: keep a half-copied file for next time; the
        # second try re-reads every file (-I) instead of trusting size and time.
        args = ["-dt", "--partial", "--delete"] + (["-I"] if attempt == 2 else [])
        remote.rsync_from(source, stage, args, what=f"copying {take.name}")
        bad = mismatches(box_sums(remote, remote_dir, take.name), local_sums(stage))
        if not bad:
            break
        log.warning("take %s: the copy differs from the box's in %s (SHA-256); copying again",
                    take.name, _files(bad))
        refetched = True
    else:
        raise PullFailed(f"{take.name}: the copy still differs from the box's in {_files(bad)} "
                         f"(SHA-256) after copying twice; kept in {stage}")

    _sync_folder_files(stage)
    try:
        os.rename(stage, dest)
    except OSError as exc:
        raise PullFailed(f"{take.name}: cannot move it into {out} ({exc.strerror})") from None
    fsync_dir(out)
    size = sum(p.stat().st_size for p in dest.iterdir())
    summary.pulled.append(take.name)
    summary.bytes += size
    if refetched:
        summary.refetched.append(take.name)
    notes = [_describe(dest), _mb(size)]
    if refetched:
        notes.append("copied twice: the first copy did not match")
    line = f"pulled       {take.name} ({'; '.join(n for n in notes if n)})"
    if delete_after:
        _delete_on_box(remote, remote_dir, take)
        summary.deleted.append(take.name)
        line += "; deleted on the box"
    report(line)


def _delete_on_box(remote: Remote, remote_dir: str, take: BoxTake) -> None:
    """Delete a verified take on the box, unless its files changed since they were listed."""
    expected = {name: list(stat) for name, stat in take.files.items()}
    _box(remote, "delete", remote_dir, take.name, stdin=json.dumps(expected),
         what=f"deleting {take.name} on the box")


def _describe(folder: Path) -> str:
    try:
        info = session_info(folder)
    except SessionError as exc:
        return f"unreadable: {str(exc).removeprefix(f'{folder}: ')}"
    minutes, seconds = divmod(round(info.duration_s, 1), 60)
    text = f"{int(minutes)}:{seconds:04.1f} of dance"
    if not info.clean:
        text += ", not cleanly stopped"
    return text


def _tidy_staging(out: Path, names: set[str], summary: PullSummary,
                  report: Callable[[str], None]) -> None:
    staging = out / STAGING
    if not staging.is_dir():
        return
    for stage in sorted(staging.iterdir()):
        try:
            stage.rmdir()    # only when empty: a copy that failed before any byte came
            continue
        except OSError:
            pass
        if stage.name not in names:
            # Possibly the only copy of a take the box has lost: never delete it.
            summary.left_alone.append(stage.name)
            report(f"note: {stage} is a partial copy of a take the box no longer has; "
                   f"left alone")
    try:
        staging.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise


# ---- helpers -----------------------------------------------------------------------

def _box(remote: Remote, mode: str, *args: str, stdin: str | None = None, what: str):
    result = remote.run(["python3", "-c", _BOX_SCRIPT, mode, *args], input=stdin, what=what)
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise PullFailed(f"{remote}: {what}: the box answered something that is not JSON "
                         f"({result.stdout[:80]!r})") from None


def _clean_flag(info: str | None) -> bool | None:
    if info is None:
        return None
    try:
        data = yaml.safe_load(info)
    except yaml.YAMLError:
        return None
    clean = data.get("clean") if isinstance(data, dict) else None
    return clean if isinstance(clean, bool) else None


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out`` for this pull: two pulls into one folder would fight over staging."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullFailed(f"{out}: another pull into this folder is running") from None
        yield
    finally:
        os.close(fd)


def _sync_folder_files(folder: Path) -> None:
    # The box may delete its copy next: what is here must be on disk, not in cache.
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)



def _files(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
