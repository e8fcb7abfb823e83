import numpy as np
import pytest

from device.overlap_add import OverlapAdd


@pytest.mark.parametrize("segment,hop", [(2205, 735), (11025, 735), (4410, 490), (1000, 300),
                                         (735, 735)])
def test_constant_segments_give_a_constant_stream(segment, hop):
    ola = OverlapAdd(segment, hop)
    out = np.concatenate([ola.push(np.full(segment, 0.5, np.float32)).copy()
                          for _ in range(40)])
    steady = out[segment:]                     # after the first segment has filled in
    np.testing.assert_allclose(steady, 0.5, atol=1e-5)


def test_each_push_emits_one_hop_and_new_sound_starts_at_once():
    ola = OverlapAdd(2205, 735)
    silent = [ola.push(np.zeros(2205, np.float32)).copy() for _ in range(5)]
    assert all(len(h) == 735 and not h.any() for h in silent)
    first = ola.push(np.ones(2205, np.float32)).copy()
    assert first[-1] > 0                       # the new segment sounds in its own hop
