import pytest
import torch

from ntlab.data.sampler import aux_share, interpolated_draw


@pytest.mark.parametrize("lam", [0.0, 0.0625, 0.25, 1.0, 4.0])
def test_interpolated_auxiliary_share_converges_to_lam_over_one_plus_lam(lam):
    is_aux, _ = interpolated_draw(200_000, lam, torch.Generator().manual_seed(1))
    # Bernoulli(p) mean over 2e5 draws: standard error ≤ 0.0012, so 0.005 is > 4 σ.
    assert is_aux.float().mean().item() == pytest.approx(lam / (1 + lam), abs=0.005)


def test_interpolated_ranks_enumerate_each_source_in_order():
    is_aux, rank = interpolated_draw(1000, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(rank[is_aux], torch.arange(int(is_aux.sum())))
    assert torch.equal(rank[~is_aux], torch.arange(int((~is_aux).sum())))


def test_interpolated_draw_is_reproducible_and_rejects_negative_lam():
    a = interpolated_draw(50, 0.5, torch.Generator().manual_seed(3))
    b = interpolated_draw(50, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert aux_share(0.0) == 0.0 and aux_share(1.0) == 0.5
    with pytest.raises(ValueError):
        aux_share(-0.1)
