import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdd_lightning.heads import Pooling, ScaleDecoupledHead, num_regions


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return nn.Linear(16, 10)


@pytest.mark.parametrize("scales", [(1,), (1, 2), (1, 4), (1, 2, 4), (1, 2, 3)])
@pytest.mark.parametrize("side", [8, 7, 4, 2])
def test_shapes(scales, side, classifier):
    head = ScaleDecoupledHead(scales)
    local = head(torch.randn(3, 16, side, side), classifier)
    assert local.shape == (3, sum(s * s for s in scales), 10)
    assert head.num_regions == num_regions(scales) == local.shape[1]


def test_region_zero_is_the_classifier_on_the_global_average(classifier):
    fmap = torch.randn(4, 16, 7, 7)
    local = ScaleDecoupledHead((1, 2, 4))(fmap, classifier)
    torch.testing.assert_close(local[:, 0], classifier(fmap.mean((2, 3))))


def test_regions_are_ordered_scale_by_scale_and_row_major(classifier):
    fmap = torch.randn(2, 16, 8, 8)
    local = ScaleDecoupledHead((1, 2, 4))(fmap, classifier)
    # region 1 + 1 = second cell of the 2x2 grid: top-right quadrant
    torch.testing.assert_close(local[:, 2], classifier(fmap[:, :, :4, 4:].mean((2, 3))))
    # region 1 + 4 + 4*2 + 3: 4x4 grid, row 2, column 3
    torch.testing.assert_close(local[:, 1 + 4 + 11], classifier(fmap[:, :, 4:6, 6:8].mean((2, 3))))


@pytest.mark.parametrize("side", [8, 7, 5])
def test_pooling_then_classifying_equals_pooling_the_logit_map(side, classifier):
    fmap = torch.randn(2, 16, side, side, dtype=torch.float64)
    clf = classifier.double()
    local = ScaleDecoupledHead((1, 2, 4))(fmap, clf)
    logit_map = torch.einsum("bchw,kc->bkhw", fmap, clf.weight) + clf.bias.view(1, -1, 1, 1)
    pooled = torch.cat([F.adaptive_avg_pool2d(logit_map, s).flatten(2) for s in (1, 2, 4)], 2).transpose(1, 2)
    torch.testing.assert_close(local, pooled, atol=1e-5, rtol=1e-5)


def test_hierarchical_pooling_differs_on_7x7_and_equals_on_8x8(classifier):
    exact = ScaleDecoupledHead((1, 2, 4), Pooling.EXACT)
    official = ScaleDecoupledHead((1, 2, 4), "hierarchical")
    fmap7 = torch.randn(2, 16, 7, 7)
    assert not torch.allclose(exact(fmap7, classifier)[:, 0], official(fmap7, classifier)[:, 0], atol=1e-4)
    fmap8 = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(exact(fmap8, classifier), official(fmap8, classifier))


def test_classifier_runs_once(classifier):
    calls = []
    classifier.register_forward_hook(lambda *args: calls.append(1))
    ScaleDecoupledHead((1, 2, 4))(torch.randn(2, 16, 8, 8), classifier)
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [(), (0,), (1, -2), (1, 2.5), "124", 2, (1, 1), (True,)])
def test_bad_scales_fail_at_construction(bad):
    with pytest.raises(ValueError, match="scales"):
        ScaleDecoupledHead(bad)


def test_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match="exact, hierarchical"):
        ScaleDecoupledHead((1,), "spp")


def test_non_map_input_is_refused(classifier):
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        ScaleDecoupledHead((1,))(torch.randn(2, 16), classifier)
