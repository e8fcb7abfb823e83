"""``make status PI="box1 box2 …"``: one row per box, asked over SSH in parallel.

Each box is asked with one shell script (one login): the release its ``current``
link names, the unit's state, status line and start time, the takes in its state
folder (takes waiting to be pulled: ``pull-data --delete-after`` removes the ones
it has brought home) and the service's last error line in the journal. A box that
cannot be reached is one line, and the others are still shown.
"""

from __future__ import annotations

import re

import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from device.config import DeviceConfig, box_path
from device.errors import DanceSamplerError
from firmware_tools.deploy import Box
from firmware_tools.ssh import Remote

TIMEOUT_S = 30.0
"""Longest a box may take to answer."""

_SCRIPT = r"""
printf 'release=%s\n' "$(basename "$(readlink {base}/current 2>/dev/null)" 2>/dev/null)"
systemctl show -p ActiveState,SubState,StatusText,ActiveEnterTimestampMonotonic dancesampler \
  2>/dev/null
printf 'uptime_s=%s\n' "$(cut -d' ' -f1 /proc/uptime 2>/dev/null)"
n=0
for d in {sessions}/*/; do [ -f "$d/session.yaml" ] && n=$((n + 1)); done
printf 'takes=%s\n' "$n"
printf 'last_error=%s\n' "$(journalctl -u dancesampler -p err -n 1 --no-pager -o cat \
  2>/dev/null | tail -n 1)"
"""


@dataclass(frozen=True)
class BoxStatus:
    """What one box said."""

    box: str
    release: str
    voice: str
    state: str
    up_s: float | None
    """Seconds since the unit last started (None when it is not running)."""
    takes: int
    last_error: str

    def cells(self) -> list[str]:
        return [self.box, self.release or "-", self.voice or "-", self.state,
                _duration(self.up_s), str(self.takes), self.last_error or "-"]


HEADINGS = ["box", "release", "voice", "state", "up", "takes", "last error"]


def box_status(remote: Remote, box: Box = Box()) -> BoxStatus:
    """Ask one box; ``RemoteError`` when it cannot be reached."""
    sessions = box.path(box_path(DeviceConfig().recorder.sessions_dir))
    script = _SCRIPT.format(base=shlex.quote(box.base), sessions=shlex.quote(sessions))
    result = remote.run(box.wrap(script), what="asking for its status", check=False,
                        timeout=TIMEOUT_S)
    values = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return parse(str(remote), values)


def parse(name: str, values: dict[str, str]) -> BoxStatus:
    """A ``BoxStatus`` from the ``key=value`` lines the script prints."""
    active, sub = values.get("ActiveState", "unknown"), values.get("SubState", "")
    status = values.get("StatusText", "")
    words = status.split()
    if active == "active" and words:
        # "playing NAME (corpus voice, 30 fps, …)", "recording NAME (…)", "no sound: …"
        state = words[0].rstrip(":") if words[0] != "no" else "no sound"
        name_part = words[1] if len(words) > 1 and state in ("playing", "recording") else ""
        kind = re.search(r"\((corpus|notes) voice", status)
        voice = f"{name_part} ({kind.group(1)})" if kind else name_part
        if ";" in status:
            state += ": " + status.split(";", 1)[1].strip()
    else:
        state, voice = f"{active}/{sub}" if sub else active, ""
    up_s = None
    try:
        entered_us = int(values.get("ActiveEnterTimestampMonotonic", "0"))
        if active == "active" and entered_us > 0:
            up_s = max(0.0, float(values["uptime_s"]) - entered_us / 1e6)
    except (KeyError, ValueError):
        pass
    try:
        takes = int(values.get("takes", "0"))
    except ValueError:
        takes = 0
    return BoxStatus(name, values.get("release", ""), voice, state, up_s, takes,
                     values.get("last_error", "").strip())


def fleet_status(remotes: list[Remote], box: Box = Box(), *,
                 print_line: Callable[[str], object] = print,
                 print_error: Callable[[str], object] = lambda line: print(line,
                                                                         file=sys.stderr)
                 ) -> int:
    """Ask every box at once; print the table, then one line per box that did not
    answer. 1 when any did not, else 0."""
    def ask(remote: Remote) -> BoxStatus | str:
        try:
            return box_status(remote, box)
        except DanceSamplerError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(remotes)))) as pool:
        answers = list(pool.map(ask, remotes))
    rows = [HEADINGS] + [a.cells() for a in answers if isinstance(a, BoxStatus)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADINGS))]
    if len(rows) > 1:
        for row in rows:
            print_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    failed = [a for a in answers if isinstance(a, str)]
    for line in failed:
        print_error(f"dancesampler: error: {line}")
    return 1 if failed else 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if days:
        return f"{int(days)}d {int(hours % 24)}h"
    if hours:
        return f"{int(hours)}h {int(minutes % 60)}m"
    return f"{int(minutes)}m {int(seconds % 60)}s"
