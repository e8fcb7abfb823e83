import numpy as np
import pytest

from device.camera.video import read_video_frames
from device.motiongram import MotiongramParams, MotiongramStream, motion_amount, motiongram
from tests.conftest import real_video


def test_stream_and_batch_are_identical_on_a_real_video():
    frames, fps = read_video_frames(real_video("mgt_dancer.avi"))
    assert frames.shape[1:] == (48, 64) and len(frames) > 1000
    batch = motiongram(frames)
    stream = MotiongramStream()
    live = np.stack([stream.push(f) for f in frames])
    assert batch.dtype == live.dtype == np.float32
    assert np.array_equal(batch, live)          # bit for bit, not approximately
    assert (motion_amount(batch, MotiongramParams()) > 0).mean() > 0.5  # the dancer moves


def test_values_are_thresholded_column_and_row_means():
    p = MotiongramParams(width=4, height=2, threshold=0.05)
    a = np.zeros((2, 4), np.uint8)
    b = a.copy()
    b[0, 1] = 12        # below 5% of 255 (12.75): sensor noise, dropped
    b[1, 2] = 255       # a full-scale change in column 2, row 1
    m = motiongram(np.stack([a, b]), p)
    assert np.array_equal(m[0], np.zeros(6))     # the first frame has no predecessor
    np.testing.assert_allclose(m[1], [0, 0, 0.5, 0, 0, 0.25])


def test_stream_reset_forgets_the_previous_frame():
    s = MotiongramStream()
    s.push(np.zeros((48, 64), np.uint8))
    s.reset()
    assert not s.push(np.full((48, 64), 255, np.uint8)).any()


def test_wrong_frame_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(\.\.\., 48, 64\)"):
        MotiongramStream().push(np.zeros((480, 640), np.uint8))
