import numpy as np
import pytest

from device.camera.video import VideoFileCamera, read_video_frames
from device.motiongram import (MotionGain, MotionGainParams, MotiongramParams, MotiongramStream,
                               block_mean, motion_amount, motiongram, ticks_motiongram)
from device.retime import frame_ticks, retime
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
    with pytest.raises(ValueError, match=r"\(\.\.\., 48, 64\) or a whole multiple"):
        MotiongramStream().push(np.zeros((50, 70), np.uint8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 96, 128\)"):
        motiongram(np.zeros((3, 48, 64), np.uint8), MotiongramParams(scale=2))


# ---- motion measured on finer frames ----------------------------------------------

def test_a_picture_with_no_detail_finer_than_the_motiongram_reads_the_same_at_every_scale():
    frames, _ = read_video_frames(real_video("mgt_dancer.avi"))
    for scale in (2, 4):
        fine = frames.repeat(scale, axis=1).repeat(scale, axis=2)   # each pixel a block
        assert np.array_equal(motiongram(fine, MotiongramParams(scale=scale)),
                              motiongram(frames))


def test_small_motion_that_coarse_frames_lose_survives_on_finer_ones():
    p = MotiongramParams(width=4, height=2, threshold=0.05, scale=2)
    fine = np.zeros((2, 4, 8), np.uint8)
    fine[1, 0, 5] = 40       # one fine pixel moves by 40 grey levels
    m = motiongram(fine, p)
    # Coarse frames average it to 10, under the threshold (13): nothing moved.
    assert not motiongram(fine, MotiongramParams(width=4, height=2, threshold=0.05)).any()
    # Finer: it passes the threshold, and its block is a quarter of a motiongram pixel.
    np.testing.assert_allclose(m[1], [0, 0, 40 / 255 / 4 / 2, 0, 40 / 255 / 4 / 4, 0], rtol=1e-6)


def test_a_far_dancer_reads_as_still_less_often_on_finer_frames():
    path = real_video("mgt_dancer.avi")      # a full-body dancer small in the frame
    coarse, _ = read_video_frames(path)
    fine, _ = read_video_frames(path, width=128, height=96)
    fine_motion = motiongram(fine, MotiongramParams(scale=2))
    still = [(motion_amount(m, MotiongramParams()) == 0).mean()
             for m in (motiongram(coarse), fine_motion)]
    assert still[1] < 0.6 * still[0]         # 22.5 % of frames still, and about 10 %
    stream = MotiongramStream(MotiongramParams(scale=2))
    assert np.array_equal(np.stack([stream.push(f) for f in fine]), fine_motion)


def test_frames_finer_than_needed_are_area_averaged_first():
    fine, _ = read_video_frames(real_video("aist_clip.mp4"), width=128, height=96)
    assert np.array_equal(motiongram(fine), motiongram(block_mean(fine, 48, 64)))


# ---- re-timing and the motion gain ------------------------------------------------

def test_a_slower_video_read_at_30_fps_never_reads_as_still_for_want_of_a_frame():
    path = real_video("mgt_dancer.avi")                     # 25 fps
    native, _ = read_video_frames(path)
    camera = VideoFileCamera(path, fps=30)
    stream = MotiongramStream()
    frames = []
    while (frame := camera.read()) is not None:
        frames.append(frame)
    camera.close()
    repeats = np.array([f.repeat for f in frames])
    assert repeats.mean() == pytest.approx(1 / 6, abs=0.01)   # one tick in six
    live = np.stack([stream.push(f.image, f.repeat) for f in frames])
    still = lambda m: (m.sum(axis=1) == 0).mean()
    # As still as the video is at its own rate, not a sixth more.
    assert still(live) == pytest.approx(still(motiongram(native)), abs=0.01)
    # The whole-take path (training, evaluation) gives the same numbers.
    _, index = frame_ticks(np.arange(len(native)) / 25.0, fps=30, source_fps=25)
    np.testing.assert_array_equal(ticks_motiongram(native, index), live)


def test_the_streaming_re_timer_and_the_whole_take_one_agree():
    rng = np.random.default_rng(3)
    for source_fps in (24.0, 25.0, 30.0, 50.0, 60.0):
        t = 0.2 + np.arange(200) / source_fps + rng.uniform(-0.002, 0.002, 200)
        ticks = list(retime(((float(x), i) for i, x in enumerate(t)), fps=30,
                            source_fps=source_fps))
        first, index = frame_ticks(t, fps=30, source_fps=source_fps)
        assert [k for k, _, _ in ticks] == list(range(first, first + len(index)))
        assert [i for _, i, _ in ticks] == index.tolist()
        assert [r for _, _, r in ticks] == [False] + (index[1:] == index[:-1]).tolist()
        # Ticks cover the take: from its first frame to the end of its last.
        assert first == 6 and len(index) == pytest.approx(200 * 30 / source_fps, abs=1)


def _dancer(scale: float, seconds: float = 40.0) -> np.ndarray:
    """Motion of the demo dancer as a camera further away (scale < 1) would read it."""
    from train_host.demo_data import make_demo_take

    frames = make_demo_take(seconds, seed=11).frames
    return motiongram(frames) * np.float32(scale)


def test_the_gain_brings_a_far_and_a_close_dancer_to_one_level_and_keeps_the_dance():
    p, g = MotiongramParams(), MotionGainParams()
    far, close = _dancer(0.04), _dancer(1.5)        # 25 times less, 1.5 times more motion
    out = {}
    for name, motion in (("far", far), ("close", close)):
        gained = MotionGain(g, p, fps=30).apply(motion)
        out[name] = motion_amount(gained, p)
    # After the first seconds, both play at the level the model learned from...
    settled = slice(10 * 30, None)
    for amount in out.values():
        moving = amount[settled][amount[settled] > 0]
        assert np.exp(np.log(moving).mean()) == pytest.approx(g.reference, rel=0.35)
    # ...and the dance's own rises and falls survive.
    raw = motion_amount(far, p)[settled]
    assert np.corrcoef(raw, out["far"][settled])[0, 1] > 0.9
    assert out["far"][settled].std() > 0.5 * out["far"][settled].mean()


def test_stillness_stays_quiet_and_flicker_is_not_turned_up():
    p, g = MotiongramParams(), MotionGainParams()
    gain = MotionGain(g, p, fps=30)
    assert not gain.apply(np.zeros((300, p.features), np.float32)).any()
    # An empty room where a few pixels flicker: under the floor, never amplified.
    flicker = np.zeros((300, p.features), np.float32)
    flicker[::7, 10] = g.floor * 0.5 * p.width
    np.testing.assert_array_equal(gain.apply(flicker), flicker)
    # Sensitivity scales whatever the gain does; reference 0 turns the gain off.
    dance = _dancer(0.1, seconds=10)
    half = MotionGain(g, p, fps=30, sensitivity=0.5).apply(dance)
    np.testing.assert_allclose(half, 0.5 * gain.apply(dance), rtol=1e-6)
    off = MotionGain(MotionGainParams(reference=0.0), p, fps=30).apply(dance)
    np.testing.assert_array_equal(off, dance)


def test_still_frames_count_the_room_s_stillness_with_the_gain_on_or_off():
    p = MotiongramParams()
    moving = np.full(p.features, 0.01, np.float32)
    flicker = np.zeros(p.features, np.float32)
    flicker[10] = 0.5 * MotionGainParams().floor * p.width   # under the floor: still
    for params in (MotionGainParams(), MotionGainParams(reference=0.0)):
        gain = MotionGain(params, p, fps=30)
        gain.push(moving)
        for i in range(1, 46):
            gain.push(flicker if i % 3 else np.zeros_like(moving))
        assert gain.still_frames == 45
        gain.push(moving)
        assert gain.still_frames == 0


def test_live_and_whole_take_gain_are_identical():
    p, g = MotiongramParams(), MotionGainParams(time_s=2.0)
    motion = _dancer(0.2, seconds=20)
    live = MotionGain(g, p, fps=30)
    streamed = np.stack([live.push(v) for v in motion])
    assert np.array_equal(streamed, MotionGain(g, p, fps=30).apply(motion))
