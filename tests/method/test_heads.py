import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdd_lightning.method.heads import Pooling, ScaleDecoupledHead, num_regions, validate_scales


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


def _official_bins(length: int, bins: int) -> list[tuple[int, int]]:
    """Bin i of an adaptive average pool covers [floor(i * L / n), ceil((i + 1) * L / n))."""
    return [((i * length) // bins, -(-(i + 1) * length // bins)) for i in range(bins)]


def _official_pool(grid: list[list[torch.Tensor]], bins: int) -> list[list[torch.Tensor]]:
    """Average pooling of a grid of (B, C) cell vectors onto ``bins x bins``, one cell at a time."""
    rows = _official_bins(len(grid), bins)
    cols = _official_bins(len(grid[0]), bins)
    return [
        [torch.stack([grid[i][j] for i in range(r0, r1) for j in range(c0, c1)]).mean(0) for c0, c1 in cols]
        for r0, r1 in rows
    ]


def _official_local_logits(fmap: torch.Tensor, classifier: nn.Linear, scales: tuple[int, ...]) -> torch.Tensor:
    """The official SPP, written out: pool the map to 4x4, pool that grid to each scale, classify every cell."""
    cells = [[fmap[:, :, i, j] for j in range(fmap.shape[3])] for i in range(fmap.shape[2])]
    base = _official_pool(cells, 4)
    regions = [cell for s in scales for row in (base if s == 4 else _official_pool(base, s)) for cell in row]
    return torch.stack([classifier(r) for r in regions], dim=1)


@pytest.mark.parametrize("scales", [(1, 2), (1, 4), (1, 2, 4)])
@pytest.mark.parametrize("side", [2, 4, 7, 8, 14])
def test_hierarchical_pooling_equals_the_official_rule(scales, side, classifier):
    torch.manual_seed(side)
    fmap = torch.randn(3, 16, side, side, dtype=torch.float64)
    clf = classifier.double()
    head = ScaleDecoupledHead(scales, "hierarchical")
    expected = _official_local_logits(fmap, clf, scales)
    torch.testing.assert_close(head(fmap, clf), expected, atol=1e-6, rtol=0)
    # the network's output (cross-entropy, accuracy) stays the plain global average, as in the official code
    global_logits, local = head.logits(fmap, clf)
    torch.testing.assert_close(global_logits, clf(fmap.mean((2, 3))), atol=1e-6, rtol=0)
    torch.testing.assert_close(local, expected, atol=1e-6, rtol=0)


def test_hierarchical_region_zero_is_not_the_global_average_on_7x7(classifier):
    fmap = torch.randn(2, 16, 7, 7)
    global_logits, local = ScaleDecoupledHead((1, 2), "hierarchical").logits(fmap, classifier)
    assert (global_logits - local[:, 0]).abs().max() > 1e-3
    exact = ScaleDecoupledHead((1, 2, 4), Pooling.EXACT)
    torch.testing.assert_close(exact.logits(fmap, classifier)[0], classifier(fmap.mean((2, 3))))


@pytest.mark.parametrize("side", [4, 8])
def test_hierarchical_and_exact_agree_when_the_side_divides_by_4(side, classifier):
    fmap = torch.randn(2, 16, side, side)
    exact = ScaleDecoupledHead((1, 2, 4), Pooling.EXACT)
    official = ScaleDecoupledHead((1, 2, 4), "hierarchical")
    torch.testing.assert_close(exact(fmap, classifier), official(fmap, classifier))


def test_hierarchical_global_head_is_the_plain_global_head(classifier):
    # M = {1}: the official code distils the network's ordinary logits, not a pooled 4x4 grid
    fmap = torch.randn(2, 16, 7, 7)
    global_logits, local = ScaleDecoupledHead((1,), "hierarchical").logits(fmap, classifier)
    torch.testing.assert_close(local[:, 0], classifier(fmap.mean((2, 3))))
    torch.testing.assert_close(global_logits, local[:, 0])


@pytest.mark.parametrize("scales", [(1, 3), (1, 2, 8)])
def test_hierarchical_refuses_scales_the_official_pyramid_lacks(scales):
    with pytest.raises(ValueError, match="divide 4"):
        ScaleDecoupledHead(scales, "hierarchical")


def test_one_classifier_call_also_with_hierarchical_global_logits(classifier):
    calls = []
    classifier.register_forward_hook(lambda *args: calls.append(1))
    ScaleDecoupledHead((1, 2, 4), "hierarchical").logits(torch.randn(2, 16, 7, 7), classifier)
    assert len(calls) == 1


def test_classifier_runs_once(classifier):
    calls = []
    classifier.register_forward_hook(lambda *args: calls.append(1))
    ScaleDecoupledHead((1, 2, 4))(torch.randn(2, 16, 8, 8), classifier)
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [(), (0,), (1, -2), (1, 2.5), "124", 2, (1, 1), (True,), (2, 4), (2, 1)])
def test_bad_scales_fail_at_construction(bad):
    with pytest.raises(ValueError, match="scales"):
        ScaleDecoupledHead(bad)


def test_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match="exact, hierarchical"):
        ScaleDecoupledHead((1,), "spp")


def test_non_map_input_is_refused(classifier):
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        ScaleDecoupledHead((1,))(torch.randn(2, 16), classifier)


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ("124", "scales must be a sequence of positive integers such as (1, 2, 4), got '124'"),
        ([], "scales is empty: give at least one scale, e.g. scales=(1,) for the plain global head"),
        (
            (2, 1),
            "scales must start with 1, got (2, 1): region 0 is the global region, which every other region is "
            "compared with (e.g. scales=(1, 2, 4))",
        ),
    ],
)
def test_a_bad_scale_set_is_refused_saying_what_to_fix(scales, message):
    with pytest.raises(ValueError) as error:
        validate_scales(scales)
    assert str(error.value) == message
