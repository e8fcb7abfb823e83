import numpy as np
import pytest

from device.camera import open_camera
from device.camera.video import VideoFileCamera, read_video_frames
from device.errors import CameraError
from tests.conftest import real_video


def test_real_clip_reads_as_64x48_grey_at_its_rate():
    frames, fps = read_video_frames(real_video("aist_clip.mp4"))
    assert fps == 30 and frames.dtype == np.uint8 and frames.shape[1:] == (48, 64)
    assert abs(len(frames) / fps - 4.9) < 0.1


def test_retiming_keeps_the_duration():
    path = real_video("musepose_dance.mp4")          # 24 fps, 12 s
    native, _ = read_video_frames(path)
    at30, fps = read_video_frames(path, fps=30)
    assert fps == 30
    assert len(native) / 24 == pytest.approx(len(at30) / 30, abs=1 / 24)
    assert np.array_equal(at30[0], native[0])


def test_unreadable_video_is_one_clear_error(tmp_path):
    bad = tmp_path / "notavideo.mp4"
    bad.write_bytes(b"this is not a video file" * 100)
    with pytest.raises(CameraError, match="notavideo.mp4: cannot open as a video"):
        VideoFileCamera(bad)
    with pytest.raises(CameraError, match="missing.mp4: cannot open as a video"):
        open_camera(f"video:{tmp_path / 'missing.mp4'}", fps=30, width=64, height=48)


def test_unknown_camera_spec_is_refused():
    with pytest.raises(CameraError, match="expected 'auto', 'pi', 'synthetic' or 'video:PATH'"):
        open_camera("webcam", fps=30, width=64, height=48)
