"""Putting a release on a box and switching to it, with rollback (``make deploy``).

On the box, under ``/opt/dancesampler`` (docs/deploy.md):

1. the release is copied with rsync into ``releases/.incoming-<id>/`` and its venv
   made there; only then is the folder renamed to ``releases/<id>/``. A copy cut
   off half way leaves the running release alone and no half release in sight;
   the next deploy carries on from what was copied.
2. ``current`` is switched to it atomically (a new symlink renamed over the old),
   the unit files are installed if they changed (the OSC service's enabled if it
   is not, the web page's too once its password is set), and the service
   restarted. With ``Type=notify``, ``systemctl
   restart`` returns once the program sent READY (its first hop of sound); the
   unit must then stay active for a few seconds. Then the OSC service and the
   web page's service are restarted too, on the new release; they are not the
   show, so their failing to start is reported and fails nothing.
3. If it does not, ``current`` goes back to the release that ran before, which is
   restarted, and the deploy fails naming the unit's state and its last journal
   lines. The three most recently deployed releases are kept.

The release that last passed that check is written in ``releases/.good``; a
rollback goes back to it. A deploy interrupted after the switch (Ctrl-C in the
health wait rolls back at once; a lost connection cannot) leaves ``current``
on a release that was never checked: the next deploy sees that it is not
``.good``, checks it, and rolls back to the good one if it does not come up.

One deploy at a time: each holds a lock on the box (``flock`` on
``/opt/dancesampler/.deploy.lock``, held by a shell that lives as long as this
deploy's ssh connection, so a deploy that is killed or cut off never leaves it
held), and a second is refused naming who holds it.

A release that is already current, checked and running is left alone: no copy,
no restart.
This never changes anything outside ``/opt/dancesampler``, the unit files,
``/etc/dancesampler/device.yaml`` (only written when missing) and the services.
"""

from __future__ import annotations

import getpass
import logging
import posixpath
import select
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from device.config import BOX_STATE_DIR, DeviceConfig, box_path
from firmware_tools.release import Release
from firmware_tools.ssh import Remote, RemoteError, _program

log = logging.getLogger(__name__)

UNIT = "dancesampler"
OSC_UNIT = "dancesampler-osc"
WEB_UNIT = "dancesampler-web"
MIDI_UNIT = "dancesampler-midi"
WEB_PASSWORD_FILE = "etc/dancesampler/web-password"
"""Provision sets it; without it the web unit is neither enabled nor started."""
KEEP_RELEASES = 3
JOURNAL_LINES = 20
# What a venv with numpy, av and the TFLite runtime takes once installed, beyond
# the wheels themselves; the room check asks for this plus twice the release.
VENV_ROOM_BYTES = 200 * 2**20
RESTART_TIMEOUT_S = 90     # TimeoutStartSec=60 in the unit, plus the stop
LOCK_TIMEOUT_S = 60        # for the box to answer whether the deploy lock is free

DEFAULT_MAKE_VENV = (
    "python3 -m venv --system-site-packages .venv && "
    ".venv/bin/pip install --quiet --disable-pip-version-check --no-index "
    "--find-links wheels --find-links {local_wheels} -r requirements.txt && "
    ".venv/bin/python -m compileall -q device")
DEFAULT_PYTHON = ("cd {current} && DANCESAMPLER_CONFIG=/etc/dancesampler/device.yaml "
                  f"STATE_DIRECTORY={BOX_STATE_DIR} PYTHONDONTWRITEBYTECODE=1 .venv/bin/python")


class DeployFailed(RemoteError):
    """The release did not come up on the box (and was rolled back where possible)."""


class DeployBusy(RemoteError):
    """Another deploy holds the box's deploy lock."""


@dataclass(frozen=True)
class Box:
    """Where things are on the box and how commands run there.

    The defaults are a real box. Tests point ``root`` at a folder standing in for
    ``/``, put stand-in ``systemctl``/``journalctl`` first on the PATH
    (``path_prefix``) and make the venv with a quick command (``make_venv``).
    """

    root: str = "/"
    path_prefix: str = ""
    """Folders put before the box's own PATH for every command (``:``-separated)."""
    make_venv: str = DEFAULT_MAKE_VENV
    """Shell command run inside the new release folder to make its ``.venv``;
    ``{local_wheels}`` is the box's own wheel folder (pyalsaaudio, built there)."""
    python: str = DEFAULT_PYTHON
    """Shell prefix that runs the box's Python with ``device`` importable;
    ``{current}`` is the current release folder."""
    sudo: bool = False
    """Run box commands with ``sudo -n`` (log in as a user, not root)."""
    settle_s: float = 5.0
    """How long the unit must stay active after READY to count as up."""

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *(p.lstrip("/") for p in parts))

    @property
    def base(self) -> str:
        return self.path("opt/dancesampler")

    @property
    def releases(self) -> str:
        return self.path("opt/dancesampler/releases")

    def wrap(self, script: str) -> list[str]:
        """The argv that runs the shell ``script`` on the box."""
        if self.path_prefix:
            script = f"PATH={shlex.quote(self.path_prefix)}:\"$PATH\"; export PATH\n{script}"
        return ["sudo", "-n", "sh", "-c", script] if self.sudo else ["sh", "-c", script]


@dataclass
class BoxState:
    current: str | None
    releases: list[str]
    incoming: list[str]
    history: list[str]
    free_bytes: int | None
    good: str | None = None
    """The release that last passed the health check (``releases/.good``)."""


@dataclass
class DeployResult:
    release: str
    changed: bool
    previous: str | None = None
    removed: list[str] = field(default_factory=list)
    status: str = ""


def deploy(remote: Remote, release: Release, box: Box = Box(), *,
           report: Callable[[str], None] = print,
           rsync: Callable[..., None] | None = None) -> DeployResult:
    """Put ``release`` on the box behind ``remote`` and make it the running one."""
    rsync = rsync or rsync_to
    with remote.connection(), _deploy_lock(remote, box):
        state = _state(remote, box)
        rid = release.id
        # Where a failure goes back to: the release last seen healthy (boxes
        # deployed before ``.good`` existed: the current one).
        previous = state.good if state.good in state.releases else (
            state.current if state.current in state.releases else None)
        if state.current == rid and rid in state.releases:
            props = _show(remote, box)
            if props.get("ActiveState") == "active" and state.good in (rid, None):
                _mark_good(remote, box, rid)
                report(f"{remote}: already running {rid}")
                return DeployResult(rid, changed=False, previous=rid)
            why = "was never checked" if state.good != rid else _describe(props)
            report(f"{remote}: {rid} is current but {why}: checking it again")
            if previous == rid:
                previous = None
            status = _start_checked(remote, box, rid, previous, report)
            return DeployResult(rid, changed=True, previous=previous, status=status)

        if rid not in state.releases:
            needed = 2 * release.size + VENV_ROOM_BYTES
            if state.free_bytes is not None and state.free_bytes < needed:
                raise RemoteError(f"{remote}: no room for release {rid} in {box.releases}: "
                                  f"needs {_mb(needed)} MB, has {_mb(state.free_bytes)} MB")
            stale = [name for name in state.incoming if name != f".incoming-{rid}"]
            if stale:
                _run(remote, box, "rm -rf " + " ".join(
                    shlex.quote(posixpath.join(box.releases, n)) for n in stale),
                    "removing copies cut off earlier")
            incoming = posixpath.join(box.releases, f".incoming-{rid}")
            report(f"{remote}: copying release {rid} ({_mb(release.size)} MB)")
            rsync(remote, box, f"{release.path}/", f"{incoming}/")
            venv = box.make_venv.format(local_wheels=shlex.quote(box.path("opt/dancesampler/wheels")))
            _run(remote, box, f"cd {shlex.quote(incoming)} && {venv}",
                 f"making the venv of release {rid}", timeout=1800)
            _run(remote, box, f"mv -T {shlex.quote(incoming)} "
                              f"{shlex.quote(posixpath.join(box.releases, rid))}",
                 f"putting release {rid} in place")

        _switch(remote, box, rid)
        status = _start_checked(remote, box, rid, previous, report)
        removed = _prune(remote, box, rid)
        for name in removed:
            report(f"{remote}: removed old release {name}")
        return DeployResult(rid, changed=True, previous=previous, removed=removed,
                            status=status)


def _start_checked(remote: Remote, box: Box, rid: str, previous: str | None,
                   report: Callable[[str], None]) -> str:
    """Restart the current release ``rid`` and check it; on failure (or Ctrl-C)
    switch back to ``previous`` and restart that. Returns the status line."""
    try:
        status = _restart_and_check(remote, box)
    except DeployFailed as failure:
        journal = _journal(remote, box)
        if previous is None:
            raise DeployFailed(f"{failure}; no earlier release to roll back to"
                               f"{journal}") from None
        _switch(remote, box, previous)
        try:
            _restart_and_check(remote, box)
            after = f"rolled back to {previous}, which is running again"
        except DeployFailed as again:
            after = f"rolled back to {previous}, which did not come up either ({again})"
        raise DeployFailed(f"{failure}; {after}{journal}") from None
    except KeyboardInterrupt:
        # Stopped in the health wait: never leave an unchecked release playing.
        if previous is not None:
            report(f"{remote}: interrupted before {rid} was checked: rolling back "
                   f"to {previous}")
            _switch(remote, box, previous)
            _run(remote, box, f"systemctl restart {UNIT}", "restarting the service",
                 check=False, timeout=RESTART_TIMEOUT_S)
        raise
    _mark_good(remote, box, rid)
    _restart_beside(remote, box, OSC_UNIT, "OSC service", f"systemctl restart {OSC_UNIT}",
                    report)
    _restart_beside(remote, box, MIDI_UNIT, "MIDI service", f"systemctl restart {MIDI_UNIT}",
                    report)
    password = shlex.quote(box.path(WEB_PASSWORD_FILE))
    _restart_beside(remote, box, WEB_UNIT, "web page's service",
                    f"if [ -e {password} ]; then systemctl restart {WEB_UNIT}; else echo "
                    f"nopassword; fi", report)
    report(f"{remote}: running {rid} ({status})")   # the last line: what the box runs
    return status


def _restart_beside(remote: Remote, box: Box, unit: str, what: str, command: str,
                    report: Callable[[str], None]) -> None:
    """Restart a service beside the show (OSC, the web page) on the release now
    current: with it off in the box's config it exits at once. A failure is
    reported; the show plays on."""
    try:
        result = _run(remote, box, command, f"restarting the {what}", check=False,
                      timeout=RESTART_TIMEOUT_S)
    except RemoteError as exc:
        report(f"{remote}: warning: the {what} was not restarted: {exc}")
        return
    if result.stdout.strip() == "nopassword":
        report(f"{remote}: note: the web page has no password yet, so it is off: "
               "provision the box again to set one")
    elif result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[-200:]
        report(f"{remote}: warning: the {what} did not start ({said}); "
               f"journalctl -u {unit} says why")


_LOCK = r"""
mkdir -p {base}
exec 9>>{base}/.deploy.lock
if ! flock -n 9; then
  echo "busy $(cat {base}/.deploy.who 2>/dev/null)"
  exit 0
fi
echo {who} "since $(date -u '+%Y-%m-%d %H:%M:%SZ')" > {base}/.deploy.who
echo locked
cat >/dev/null
"""


@contextmanager
def _deploy_lock(remote: Remote, box: Box) -> Iterator[None]:
    """Hold the box's deploy lock for the block.

    The lock is held by a shell on the box that waits on this end of its ssh
    connection: when the block ends, or this process dies, or the connection
    drops, the shell ends and the lock is free.
    """
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    script = _LOCK.format(base=shlex.quote(box.base), who=shlex.quote(who))
    proc = subprocess.Popen(remote.ssh_command(box.wrap(script)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], LOCK_TIMEOUT_S)
        answer = proc.stdout.readline().strip() if ready else ""
        if answer != "locked":
            if answer.startswith("busy"):
                holder = answer[4:].strip() or "another deploy"
                raise DeployBusy(f"{remote}: another deploy is under way on this box "
                                 f"({holder}); try again when it has finished")
            proc.kill()
            _, stderr = proc.communicate(timeout=30)
            if proc.returncode == 255:
                raise remote._ssh_error(stderr, "taking the deploy lock")
            raise remote._command_error(proc.returncode or 1, stderr or "no answer",
                                        "taking the deploy lock")
        yield
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rsync_to(remote: Remote, box: Box, source: str, dest: str,
             args: tuple[str, ...] = ()) -> None:
    """Copy ``source`` here to ``dest`` on the box with rsync (resumable, whole files)."""
    result = subprocess.run(rsync_to_command(remote, box, source, dest, args),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        what = f"copying to {dest}"
        error = remote._login_or_unreachable(result.stderr, what)
        if error is not None:
            raise error
        if "No space left on device" in result.stderr:
            raise RemoteError(f"{remote}: {what}: the box ran out of room (No space left "
                              f"on device); what was copied is kept for the next try")
        raise remote._command_error(result.returncode, result.stderr, what, program="rsync")


def rsync_to_command(remote: Remote, box: Box, source: str, dest: str,
                     args: tuple[str, ...] = ()) -> list[str]:
    # -a without owners: files on the box belong to whoever deploys (root), not
    # to this machine's user id. --delete: a resumed copy drops what changed.
    argv = [_program("rsync", "rsync"), "-e", shlex.join(remote.ssh_options()),
            "-rlpt", "--delete", *args]
    if box.sudo:
        argv.append("--rsync-path=sudo -n rsync")
    return [*argv, source, f"{remote.target}:{dest}"]


# ---- steps on the box -------------------------------------------------------------

_STATE = r"""
base={base}
mkdir -p "$base/releases"
echo "current=$(readlink "$base/current" 2>/dev/null)"
for d in "$base"/releases/* "$base"/releases/.incoming-*; do
  [ -d "$d" ] && [ ! -L "$d" ] && echo "release=$(basename "$d")"
done
[ -f "$base/releases/.history" ] && sed 's/^/history=/' "$base/releases/.history"
[ -f "$base/releases/.good" ] && echo "good=$(cat "$base/releases/.good")"
echo "df=$(df -Pk "$base/releases" | tail -n 1)"
"""


def _state(remote: Remote, box: Box) -> BoxState:
    out = _run(remote, box, _STATE.format(base=shlex.quote(box.base)),
               "reading the releases on the box").stdout
    current, releases, incoming, history, free, good = None, [], [], [], None, None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "current" and value:
            current = posixpath.basename(value.rstrip("/"))
        elif key == "release":
            (incoming if value.startswith(".incoming-") else releases).append(value)
        elif key == "history" and value:
            history.append(value)
        elif key == "good" and value:
            good = value
        elif key == "df":
            fields = value.split()
            if len(fields) >= 6 and fields[-3].isdigit():
                free = int(fields[-3]) * 1024
    return BoxState(current, sorted(releases), sorted(incoming), history, free, good)


_SWITCH = r"""
set -e
cd {base}
ln -sfn {target} .current-new
mv -T .current-new current
echo {rid} >> releases/.history
reload=
for name in dancesampler dancesampler-osc dancesampler-web dancesampler-midi; do
  [ -f current/systemd/$name.service ] || continue   # a release from before that service
  unit={unit_dir}/$name.service
  if ! cmp -s current/systemd/$name.service "$unit"; then
    mkdir -p {unit_dir}
    cp current/systemd/$name.service "$unit.new"
    mv -f "$unit.new" "$unit"
    reload=1
  fi
done
[ -z "$reload" ] || systemctl daemon-reload
# A box provisioned before the OSC or the MIDI service came gets it enabled here.
for name in dancesampler-osc dancesampler-midi; do
  if [ -f current/systemd/$name.service ] && \
     ! systemctl is-enabled --quiet $name 2>/dev/null; then
    systemctl enable --quiet $name
  fi
done
# The web page's too, once provision has set its password (its credential).
if [ -f current/systemd/dancesampler-web.service ] && [ -e {web_password} ] && \
   ! systemctl is-enabled --quiet dancesampler-web 2>/dev/null; then
  systemctl enable --quiet dancesampler-web
fi
if [ ! -e {config} ]; then
  mkdir -p {config_dir}
  cp current/config/device.yaml {config}.new
  mv -f {config}.new {config}
fi
# The release's bundles join the box's own in its one models folder (made by
# provision), each copied beside and renamed into place.
if [ -d {models} ]; then
  for b in current/models/*.dsb; do
    [ -f "$b" ] || continue
    n=$(basename "$b")
    cmp -s "$b" {models}/"$n" && continue
    cp "$b" {models}/".$n.new" && chmod 0644 {models}/".$n.new"
    mv -f {models}/".$n.new" {models}/"$n"
  done
fi
# The release's tracks join the box's music folder; a track the box already has
# under that name is never replaced.
if [ -d {music} ]; then
  for t in current/music/*; do
    [ -f "$t" ] || continue
    n=$(basename "$t")
    [ -e {music}/"$n" ] && continue
    cp "$t" {music}/".$n.new" && chmod 0644 {music}/".$n.new"
    mv -f {music}/".$n.new" {music}/"$n"
  done
fi
"""


def _switch(remote: Remote, box: Box, rid: str) -> None:
    config = box.path("etc/dancesampler/device.yaml")
    _run(remote, box, _SWITCH.format(
        base=shlex.quote(box.base), target=shlex.quote(f"releases/{rid}"), rid=shlex.quote(rid),
        unit_dir=shlex.quote(box.path("etc/systemd/system")), config=shlex.quote(config),
        web_password=shlex.quote(box.path(WEB_PASSWORD_FILE)),
        config_dir=shlex.quote(posixpath.dirname(config)),
        models=shlex.quote(box.path(box_path(DeviceConfig().model.models_dir))),
        music=shlex.quote(box.path(box_path(DeviceConfig().recorder.music_dir)))),
        f"switching to release {rid}")


def _mark_good(remote: Remote, box: Box, rid: str) -> None:
    """Write ``rid`` as the release a failed deploy goes back to."""
    good = posixpath.join(box.releases, ".good")
    _run(remote, box, f"echo {shlex.quote(rid)} > {shlex.quote(good + '.new')} && "
                      f"mv -f {shlex.quote(good + '.new')} {shlex.quote(good)}",
         "recording the checked release")


def _restart_and_check(remote: Remote, box: Box) -> str:
    """Restart the unit and wait until it is up; return its status line."""
    result = _run(remote, box, f"systemctl restart {UNIT}", "restarting the service",
                  check=False, timeout=RESTART_TIMEOUT_S)
    if result.returncode != 0:
        raise DeployFailed(f"{remote}: {UNIT} failed to start "
                           f"({_show_line(remote, box)})")
    deadline = time.monotonic() + box.settle_s
    while True:
        props = _show(remote, box)
        if props.get("ActiveState") != "active":
            raise DeployFailed(f"{remote}: {UNIT} did not stay up after READY "
                               f"({_describe(props)})")
        if time.monotonic() >= deadline:
            return _describe(props)
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))


def _show(remote: Remote, box: Box) -> dict[str, str]:
    out = _run(remote, box, f"systemctl show -p ActiveState,SubState,StatusText {UNIT}",
               "reading the service's state", check=False).stdout
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def _show_line(remote: Remote, box: Box) -> str:
    try:
        return _describe(_show(remote, box))
    except RemoteError as exc:
        return f"state unknown: {exc}"


def _describe(props: dict[str, str]) -> str:
    state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
    text = props.get("StatusText", "").strip()
    return f"{state}: {text}" if text else state


def _journal(remote: Remote, box: Box) -> str:
    result = _run(remote, box, f"journalctl -u {UNIT} -n {JOURNAL_LINES} --no-pager",
                  "reading the journal", check=False)
    lines = [line.rstrip() for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        return ""
    return f"\nlast {len(lines)} journal lines of {UNIT}:\n" + "\n".join(
        f"  {line}" for line in lines)


def _prune(remote: Remote, box: Box, current: str) -> list[str]:
    """Remove all but the ``KEEP_RELEASES`` most recently deployed releases."""
    state = _state(remote, box)
    order = []   # most recent first, each once
    for rid in reversed(state.history):
        if rid not in order:
            order.append(rid)
    ranked = [r for r in order if r in state.releases] + \
             [r for r in state.releases if r not in order]   # never deployed: oldest
    keep = {current, *ranked[:KEEP_RELEASES]}
    if state.good:
        keep.add(state.good)
    victims = [r for r in ranked if r not in keep]
    if victims:
        _run(remote, box, "cd {} && rm -rf {} && grep -vxF {} .history > .history.new; "
                          "mv -f .history.new .history".format(
                              shlex.quote(box.releases), " ".join(map(shlex.quote, victims)),
                              " ".join(f"-e {shlex.quote(v)}" for v in victims)),
             "removing old releases")
    return victims


def _run(remote: Remote, box: Box, script: str, what: str, *, check: bool = True,
         timeout: float | None = 120) -> subprocess.CompletedProcess:
    return remote.run(box.wrap(script), what=what, check=check, timeout=timeout)


def _mb(size: int) -> int:
    return max(0, round(size / 2**20))


def box_from_args(args) -> Box:
    """The ``Box`` the command-line options describe."""
    kwargs = {"root": args.root, "sudo": args.sudo}
    for key, value in (("path_prefix", args.box_path), ("make_venv", args.box_venv),
                       ("python", args.box_python), ("settle_s", args.settle)):
        if value is not None:
            kwargs[key] = value
    return Box(**kwargs)

