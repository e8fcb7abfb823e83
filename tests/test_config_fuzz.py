"""Malformed device configs are refused in one line: no traceback, hang or blow-up."""

import os
import random

import pytest
import yaml

from device.config import PROJECT_ROOT, load_device_config
from device.errors import ConfigError

_WRONG = (None, True, "x", -1, 0, 1e308, float("nan"), [], {}, [[[[]]]], "9" * 400,
          "/dev/zero", {"a": {"b": {"c": 1}}})


def _cases(seed: int):
    """(what, YAML text): every key of the shipped config given each wrong value,
    and texts no YAML config should be."""
    shipped = yaml.safe_load((PROJECT_ROOT / "config" / "device.yaml").read_text())
    keys = [(section, key) for section, values in shipped.items() for key in values]
    for section, key in keys:
        for value in _WRONG:
            changed = {s: dict(v) for s, v in shipped.items()}
            changed[section][key] = value
            yield f"{section}.{key} = {value!r:.20}", yaml.safe_dump(changed)
    rng = random.Random(seed)
    for text in ("[" * 100000, "a: " * 20000 + "1", "a: &x [*x]",
                 "a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b]",
                 "\x00\xff\xfe", "camera: {source: [", "- 1\n- 2", "!!python/object:os.system x",
                 bytes(rng.randrange(256) for _ in range(2000)).decode("latin-1")):
        yield f"text {text[:12]!r}", text


def test_generated_bad_configs_are_one_line_each(tmp_path):
    path = tmp_path / "device.yaml"
    tried = refused = 0
    for what, text in _cases(seed=3):
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        tried += 1
        try:
            load_device_config(path)
        except ConfigError as exc:
            refused += 1
            message = str(exc)
            assert message.startswith(str(path)) and "\n" not in message, (what, message)
            assert len(message) < 4000, (what, len(message))
    assert tried > 500 and refused > 0.9 * tried, (tried, refused)


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "huge"])
def test_a_config_path_that_is_not_a_small_file_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "device.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: "):
        load_device_config(path)
