"""Training windows follow the timing contract of the world model."""

import pytest
import torch

from vidplan_server.data.windows import window_indices


def test_window_indices_follow_the_timing_contract():
    idx = window_indices([20, 17], history=2, horizon=5, stride=3)
    # episode 0: k = 0..4 (k + 15 <= 19); episode 1: k = 0..1
    assert idx["episode"].tolist() == [0] * 5 + [1] * 2
    assert idx["history"][0].tolist() == [0, 0]  # the first frame repeats at the episode start
    assert idx["history"][4].tolist() == [1, 4]
    assert idx["future"][4].tolist() == [7, 10, 13, 16, 19]
    assert idx["action"][4].tolist() == [6, 9, 12, 15, 18]
    # episode 1 rows start after episode 0's 20 rows
    assert idx["history"][6].tolist() == [21, 21]  # k = 1: the earliest frame of its phase repeats
    assert idx["future"][6].tolist() == [24, 27, 30, 33, 36]
    assert int(idx["future"].max()) < 37


def test_window_indices_refuse_episodes_that_are_too_short():
    with pytest.raises(ValueError, match="horizon"):
        window_indices([10], history=2, horizon=5, stride=3)
    assert isinstance(window_indices([16], 1, 5, 3)["future"], torch.Tensor)


def test_phase_subsampling_keeps_one_offset_per_episode_and_reads_only_that_phase():
    idx = window_indices([20, 20], history=2, horizon=5, stride=3, phases=[1, 2])
    ks0 = idx["history"][idx["episode"] == 0][:, -1]
    assert ks0.tolist() == [1, 4]
    for key in ("history", "future"):
        rows = idx[key][idx["episode"] == 0]
        assert torch.all(rows % 3 == 1)
        rows = idx[key][idx["episode"] == 1] - 20
        assert torch.all(rows % 3 == 2)
    assert idx["history"][0].tolist() == [1, 1]  # clamped to the earliest frame of its phase


def test_concatenated_windows_gather_the_same_batches_as_their_parts():
    import torch

    from vidplan_server.data.windows import LatentWindows

    def part(seed, lengths):
        g = torch.Generator().manual_seed(seed)
        lat = [torch.randn(n, 4, 48, 16, generator=g).half() for n in lengths]
        act = [torch.randn(n, 7, generator=g) for n in lengths]
        return LatentWindows.build(lat, act, history=2, horizon=2, stride=1)

    a, b = part(0, [8, 9]), part(1, [10])
    both = LatentWindows.concat([a, b])
    assert len(both) == len(a) + len(b)
    assert both.index["episode"].unique().tolist() == [0, 1, 2]
    for i, (src, j) in enumerate([(a, 0), (a, len(a) - 1), (b, 0), (b, len(b) - 1)]):
        k = j if src is a else len(a) + j
        for x, y in zip(both.gather(torch.tensor([k]), "cpu"), src.gather(torch.tensor([j]), "cpu"), strict=True):
            assert torch.equal(x, y), i


def test_repeat_shares_the_latents_and_repeats_every_window():
    import torch

    from vidplan_server.data.windows import LatentWindows

    latents = torch.randn(10, 4, 6, 2)
    w = LatentWindows.build([latents], [torch.randn(10, 7)], history=2, horizon=2, stride=1)
    r = w.repeat(3)
    assert len(r) == 3 * len(w) and r.latents is w.latents
    h0, a0, f0 = w.gather(torch.arange(len(w)), torch.device("cpu"))
    h1, a1, f1 = r.gather(torch.arange(len(w), 2 * len(w)), torch.device("cpu"))
    assert torch.equal(h0, h1) and torch.equal(a0, a1) and torch.equal(f0, f1)
