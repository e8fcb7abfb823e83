"""Making a fresh Raspberry Pi OS box ready for deploys (``provision``).

One shell script, sent over SSH and run as root, whose every step first checks
whether it is already done: running it again changes nothing and installs
nothing. The steps (docs/deploy.md says why each is there):

1. apt packages the box needs (picamera2, venv, rsync, what pyalsaaudio builds with)
2. the groups and the service user ``dancesampler`` (video, audio, gpio)
3. folders: releases, the box's own wheels, state and config
4. a pyalsaaudio wheel, built once on the box (it publishes none)
5. the web page's password, set once: its salted hash in
   ``/etc/dancesampler/web-password`` (root's only; the web unit gets it as a
   credential), the password itself shown once by this command
6. the systemd units, installed and enabled: the sound service, the OSC
   service (which exits at once while the config turns OSC off) and the web
   page's service
7. with ``--read-only-root``: the overlay root file system, only when
   ``/var/lib/dancesampler`` is its own writable mount (or takes would be lost)

It never removes anything, and never touches a release or ``device.yaml``; a
password already set is kept unless ``--new-web-password`` asks for a new one.
"""

from __future__ import annotations

import logging
import secrets
import shlex
from collections.abc import Callable
from pathlib import Path

from device.config import BOX_STATE_DIR, DeviceConfig, box_path
from firmware_tools.deploy import Box, _run
from firmware_tools.ssh import Remote

log = logging.getLogger(__name__)

# Packages only Raspberry Pi OS's own archive has, and what a box without them
# lacks. gpiozero comes from apt too: Raspberry Pi OS's python3-gpiozero with
# python3-lgpio drive the Pi 5's pins, where PyPI's gpiozero 2.0.1 does not.
PI_PACKAGES = {"python3-picamera2": "no Pi camera", "python3-lgpio": "no GPIO buttons"}
APT_PACKAGES = (*PI_PACKAGES, "python3-gpiozero", "python3-venv", "python3-pip",
                "python3-dev", "libasound2-dev", "gcc", "rsync")
GROUPS = ("video", "audio", "gpio")
USER = "dancesampler"
PYALSAAUDIO = "pyalsaaudio==0.11.0"
UNIT = Path(__file__).resolve().parents[1] / "systemd" / "dancesampler.service"
OSC_UNIT = UNIT.with_name("dancesampler-osc.service")
WEB_UNIT = UNIT.with_name("dancesampler-web.service")
MIDI_UNIT = UNIT.with_name("dancesampler-midi.service")
WEB_PASSWORD_FILE = "/etc/dancesampler/web-password"

_SCRIPT = r"""set -eu
R={root}
say() {{ echo "provision: $*"; }}

# 1. apt packages (only the missing ones; no apt-get update when none is).
# Some are in Raspberry Pi OS's own archive only: a box whose archives lack one
# (plain Debian) is provisioned without it, and without what it is for.
missing=""
for p in {packages}; do
  dpkg-query -W -f='${{Status}}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -qq
  while read -r p what; do
    case " $missing " in
      *" $p "*)
        if ! apt-cache show "$p" >/dev/null 2>&1; then
          say "$p is not in this box's archives (not Raspberry Pi OS): $what"
          missing=$(echo "$missing " | sed "s/ $p / /")
        fi ;;
    esac
  done <<'PI'
{pi_packages}
PI
  missing=$(echo $missing)
  [ -z "$missing" ] || missing=" $missing"
fi
if [ -n "$missing" ]; then
  say "installing$missing"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
  say "apt packages: all present"
fi

# 2. groups and the service user
for g in {groups}; do
  getent group "$g" >/dev/null || {{ say "adding group $g"; groupadd --system "$g"; }}
done
if id -u {user} >/dev/null 2>&1; then
  say "user {user}: present"
else
  say "adding user {user}"
  useradd --system --user-group --home-dir {state} --shell /usr/sbin/nologin {user}
fi
usermod -a -G {group_list} {user}

# 3. folders
mkdir -p "$R/opt/dancesampler/releases" "$R/opt/dancesampler/wheels" "$R/etc/dancesampler" \
         "$R{models}" "$R{sessions}" "$R{music}"
chown -R {user}:{user} "$R{state}"
chmod 0750 "$R{state}"

# 4. pyalsaaudio: no wheels on PyPI, so build one here, once
if ls "$R/opt/dancesampler/wheels"/pyalsaaudio-{alsa_version}-*.whl >/dev/null 2>&1; then
  say "pyalsaaudio wheel: present"
else
  say "building the pyalsaaudio wheel"
  python3 -m pip wheel --quiet --no-deps --no-binary :all: {alsa_pin} -w "$R/opt/dancesampler/wheels"
fi

# 5. the web page's password: its hash only, root's only, set once
pw="$R{web_password_file}"
if [ -s "$pw" ] && [ {new_password} = 0 ]; then
  say "web page password: present (kept)"
else
  (umask 077; printf '%s\n' {web_password_hash} > "$pw.new")
  chmod 0600 "$pw.new"; mv -f "$pw.new" "$pw"
  say "web page password: set"
fi

# 6. the units
mkdir -p "$R/etc/systemd/system"
{units}"""

_UNIT = r"""unit="$R/etc/systemd/system/{name}.service"
cat > "$unit.new" <<'DANCESAMPLER_UNIT_END'
{text}DANCESAMPLER_UNIT_END
if cmp -s "$unit.new" "$unit"; then
  rm -f "$unit.new"; say "{what}: unchanged"
else
  mv -f "$unit.new" "$unit"; say "{what}: installed"; systemctl daemon-reload
fi
systemctl is-enabled --quiet {name} 2>/dev/null || {{ say "enabling the {what}"; systemctl enable {name}; }}
"""

_READ_ONLY = r"""
# 7. read-only root (overlay file system): takes must live on their own mount
if ! mountpoint -q "$R{state}"; then
  echo "provision: --read-only-root needs {state} on its own writable partition (it is not a mount point): takes would be lost at every reboot" >&2
  exit 3
fi
if [ "$(raspi-config nonint get_overlay_now 2>/dev/null || echo 1)" = 0 ]; then
  say "read-only root: already on"
else
  say "turning the read-only root on (takes effect at the next reboot)"
  raspi-config nonint do_overlayfs 0
fi
"""


def provision_script(*, root: str = "/", read_only_root: bool = False,
                     web_password_hash: str = "", new_web_password: bool = False) -> str:
    """The shell script that provisions a box whose ``/`` is ``root``; it sets the
    page's password to ``web_password_hash`` (``device.web.hash_password``) where
    none is set, or with ``new_web_password``."""
    if not web_password_hash:
        from device.web import hash_password

        web_password_hash = hash_password(secrets.token_urlsafe(12))   # never shown
    units = ""
    for path, what in ((UNIT, "unit"), (OSC_UNIT, "OSC unit"), (WEB_UNIT, "web unit"),
                       (MIDI_UNIT, "MIDI unit")):
        text = path.read_text()
        if "DANCESAMPLER_UNIT_END" in text:
            raise ValueError(f"{path.name} holds the heredoc's end marker")
        units += _UNIT.format(name=path.stem, what=what,
                              text=text if text.endswith("\n") else text + "\n")
    defaults = DeviceConfig()
    script = _SCRIPT.format(
        root=shlex.quote(root.rstrip("/")), packages=" ".join(APT_PACKAGES),
        pi_packages="\n".join(f"{p} {what}" for p, what in PI_PACKAGES.items()),
        state=BOX_STATE_DIR, models=box_path(defaults.model.models_dir),
        sessions=box_path(defaults.recorder.sessions_dir),
        music=box_path(defaults.recorder.music_dir),
        groups=" ".join(GROUPS), group_list=",".join(GROUPS), user=USER,
        alsa_pin=shlex.quote(PYALSAAUDIO), alsa_version=PYALSAAUDIO.split("==")[1],
        web_password_file=WEB_PASSWORD_FILE, web_password_hash=shlex.quote(web_password_hash),
        new_password=int(new_web_password), units=units)
    return script + (_READ_ONLY.format(state=BOX_STATE_DIR) if read_only_root else "")


def provision(remote: Remote, box: Box = Box(), *, read_only_root: bool = False,
              new_web_password: bool = False,
              report: Callable[[str], None] = print) -> list[str]:
    """Run the provisioning script on the box; return what it said it did. A
    password for the web page is made here and, when the box took it (it had
    none, or ``new_web_password``), shown once: the box keeps only its hash."""
    from device.web import hash_password

    password = secrets.token_urlsafe(12)
    with remote.connection():
        result = _run(remote, box, provision_script(
            root=box.root, read_only_root=read_only_root,
            web_password_hash=hash_password(password), new_web_password=new_web_password),
            "provisioning", timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("provision:")]
    for line in lines:
        report(f"{remote}: {line.removeprefix('provision: ')}")
    if "provision: web page password: set" in lines:
        report(f"{remote}: the web page's password is {password} (shown only now; the box "
               "keeps its hash: write it down)")
    return lines
