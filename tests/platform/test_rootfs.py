"""The platform roots' build folder: what an interrupted build leaves is cleaned safely."""

import shutil
import subprocess

import pytest

from tests.platform.rootfs import mounts_under, unmount_under


def test_an_interrupted_build_s_mounted_proc_is_detached_before_its_folder_is_removed(tmp_path):
    building = tmp_path / "rootfs-bookworm-arm64-x.building"
    (building / "proc").mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(building / "proc")],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a proc here ({mounted.stderr.strip()})")
    try:
        assert mounts_under(building) == [str((building / "proc").resolve())]
        assert mounts_under(tmp_path / "rootfs-bookworm-arm64-x") == []   # not a prefix match
        unmount_under(building)
        assert mounts_under(building) == []
        shutil.rmtree(building)
        assert not building.exists()
    finally:
        subprocess.run(["umount", "--lazy", str(building / "proc")], capture_output=True)
