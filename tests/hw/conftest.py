"""Tests that need a real Raspberry Pi: camera, sound card and GPIO (`make test-hw`).

They are marked ``hw``; `make test` deselects them, and on a machine that is not a
Pi they skip, saying why.
"""

from pathlib import Path

import pytest


def _is_pi() -> bool:
    model = Path("/proc/device-tree/model")
    return model.exists() and "Raspberry Pi" in model.read_text(errors="replace")


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # This hook sees every collected test, not only this folder's.
    for item in items:
        if HERE not in Path(item.fspath).parents:
            continue
        item.add_marker(pytest.mark.hw)
        if not _is_pi():
            item.add_marker(pytest.mark.skip(reason="needs a Raspberry Pi "
                                                    "(no /proc/device-tree/model says so)"))
