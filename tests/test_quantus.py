"""The localisation scores against Quantus's reference implementations, and their own references.

Quantus (tests only) is called with `normalise=False, abs=False` so its metrics see our maps
unchanged, `model=None` (these three metrics never call the model), `return_aggregate=False`
(one score per image) and `channel_first=True`. Its masks are `s_batch.astype(bool)`.

Quirks of Quantus 0.6 where our scores deliberately differ (each pinned by a test below):
- PointingGame counts a hit when *any* pixel equal to the maximum lies on the mask; ours takes
  the first maximum in raster order (as `pointing_game` always has). So on tied maxima it can
  hit where we miss, and an all-zero map (every pixel a maximum) hits any non-empty mask, where
  ours never hits.
- PointingGame with an empty mask returns True: it writes NaN into a bool array, which numpy
  casts to True. Ours misses (False).
- RelevanceMassAccuracy divides by the map's total without a guard: an all-zero map scores NaN
  (numpy warns); ours scores 0. An empty mask scores NaN there; ours scores 0 (its existing
  behaviour: no mass on an empty mask).
- RelevanceRankAccuracy ranks with `np.argsort(-a)` (quicksort, not stable), so its order among
  tied values is unspecified; ours ranks ties in raster order. Maps are compared only where ties
  cannot change the answer (continuous random maps, or maps equal to their mask).
- Quantus asserts that the batch as a whole is not all zero or constant, so all-zero images are
  passed inside a batch with non-zero ones.
"""

import warnings

import numpy as np
import pytest
import torch

from gradcam_repro.measure import scores

N, SIZE = 16, 32
ATOL = 1e-6


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def box_mask(box, size=SIZE):
    top, left, bottom, right = box
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def random_boxes(gen, n):
    """n random boxes of different sizes and places, then 6 fixed ones at the image border."""
    boxes = []
    for _ in range(n):
        h, w = (int(v) for v in torch.randint(1, SIZE + 1, (2,), generator=gen))
        top, left = int(torch.randint(0, SIZE - h + 1, (1,), generator=gen)), int(torch.randint(0, SIZE - w + 1, (1,), generator=gen))
        boxes.append((top, left, top + h, left + w))
    return boxes + [(0, 0, 6, 6), (26, 26, 32, 32), (0, 10, 32, 14), (5, 0, 9, 32), (0, 0, 32, 32), (31, 31, 32, 32)]


def disc_mask(center=(14, 18), radius=7.5):
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def batch():
    """(maps, masks): non-negative continuous maps (no ties) and per-image masks: boxes of
    different sizes, a disc, a scattered mask, a single pixel and the whole image."""
    gen = torch.Generator().manual_seed(0)
    boxes = random_boxes(gen, N - 10)  # + 6 fixed boxes
    masks = torch.stack([box_mask(b) for b in boxes]
                        + [disc_mask(), torch.rand(SIZE, SIZE, generator=gen) < 0.3, box_mask((17, 3, 18, 4)),
                           box_mask((0, 0, SIZE, SIZE))])
    maps = torch.rand(N, SIZE, SIZE, generator=gen)
    # Make some maps point at their mask and others away from it, so both hits and misses occur.
    maps[: N // 2] += 0.5 * masks[: N // 2]
    return maps, masks


def run_quantus(metric, maps, masks):
    n = maps.shape[0]
    a = maps.numpy().astype(np.float32)[:, None]
    s = masks.numpy().astype(np.float32)[:, None]
    x = np.random.default_rng(0).random((n, 3, *maps.shape[-2:])).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Quantus's own warnings on empty masks and 0 / 0
        out = metric(normalise=False, abs=False, disable_warnings=True, return_aggregate=False)(
            model=None, x_batch=x, y_batch=np.zeros(n, dtype=np.int64), a_batch=a, s_batch=s, channel_first=True)
    return np.asarray(out, dtype=np.float64)


def test_batch_has_hits_and_misses(batch):
    maps, masks = batch
    hits = scores.pointing_game_mask(maps, masks)
    assert 0 < hits.sum() < N
    assert len(set(masks.flatten(1).sum(1).tolist())) > N // 2  # masks of many sizes


def test_energy_matches_relevance_mass_accuracy(quantus, batch):
    maps, masks = batch
    ours = scores.cam_energy_in_mask(maps, masks).double().numpy()
    np.testing.assert_allclose(ours, run_quantus(quantus.RelevanceMassAccuracy, maps, masks), rtol=0, atol=ATOL)


def test_pointing_matches_pointing_game(quantus, batch):
    maps, masks = batch
    ours = scores.pointing_game_mask(maps, masks).double().numpy()
    np.testing.assert_array_equal(ours, run_quantus(quantus.PointingGame, maps, masks))


def test_rank_accuracy_matches_relevance_rank_accuracy(quantus, batch):
    maps, masks = batch
    ours = scores.relevance_rank_accuracy(maps, masks).double().numpy()
    np.testing.assert_allclose(ours, run_quantus(quantus.RelevanceRankAccuracy, maps, masks), rtol=0, atol=ATOL)


def test_map_equal_to_its_mask_scores_one_in_all_three(quantus, batch):
    _, masks = batch
    maps = masks.float()  # ties everywhere, but the top K pixels are exactly the mask whatever the tie rule
    for ours, metric in ((scores.cam_energy_in_mask(maps, masks), quantus.RelevanceMassAccuracy),
                         (scores.pointing_game_mask(maps, masks), quantus.PointingGame),
                         (scores.relevance_rank_accuracy(maps, masks), quantus.RelevanceRankAccuracy)):
        np.testing.assert_allclose(ours.double().numpy(), np.ones(N), rtol=0, atol=ATOL)
        np.testing.assert_allclose(run_quantus(metric, maps, masks), np.ones(N), rtol=0, atol=ATOL)


def test_all_zero_maps_score_zero_where_quantus_gives_nan_or_a_hit(quantus, batch):
    maps, masks = batch
    maps = maps.clone()
    maps[::2] = 0  # Quantus refuses an all-zero batch, so half the images stay non-zero
    energy = scores.cam_energy_in_mask(maps, masks)
    hits = scores.pointing_game_mask(maps, masks)
    assert energy[::2].tolist() == [0.0] * (N // 2) and not hits[::2].any()
    assert np.isnan(run_quantus(quantus.RelevanceMassAccuracy, maps, masks)[::2]).all()  # 0 / 0
    assert run_quantus(quantus.PointingGame, maps, masks)[::2].all()  # every pixel is a maximum
    # The non-zero images still agree.
    np.testing.assert_allclose(energy[1::2].double().numpy(), run_quantus(quantus.RelevanceMassAccuracy, maps, masks)[1::2],
                               rtol=0, atol=ATOL)
    np.testing.assert_array_equal(hits[1::2].double().numpy(), run_quantus(quantus.PointingGame, maps, masks)[1::2])


def test_tied_maxima_count_the_first_in_raster_order_where_quantus_counts_any(quantus):
    maps = torch.rand(2, SIZE, SIZE) * 0.5
    maps[:, 0, 0] = maps[:, 20, 20] = 1.0  # two equal maxima, the first off the mask
    masks = box_mask((18, 18, 23, 23)).expand(2, SIZE, SIZE).clone()
    assert scores.pointing_game_mask(maps, masks).tolist() == [False, False]
    assert run_quantus(quantus.PointingGame, maps, masks).tolist() == [1.0, 1.0]


def test_empty_mask(quantus, batch):
    maps, masks = batch
    masks = masks.clone()
    masks[3] = False
    assert torch.isnan(scores.relevance_rank_accuracy(maps, masks)[3])
    assert np.isnan(run_quantus(quantus.RelevanceRankAccuracy, maps, masks)[3])
    assert scores.cam_energy_in_mask(maps, masks)[3] == 0 and np.isnan(run_quantus(quantus.RelevanceMassAccuracy, maps, masks)[3])
    assert not scores.pointing_game_mask(maps, masks)[3]
    assert run_quantus(quantus.PointingGame, maps, masks)[3] == 1.0  # NaN written into a bool array


def test_rank_accuracy_ties_rank_in_raster_order():
    maps = torch.zeros(3, 4, 4)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 0, :3] = True  # the first 3 pixels in raster order: all-zero map scores 1
    masks[1, 3, 1:] = True  # the last 3: scores 0
    masks[2, 0, 0] = masks[2, 3, 3] = True  # first and last: 1 / 2
    assert scores.relevance_rank_accuracy(maps, masks).tolist() == [1.0, 0.0, 0.5]


def test_rank_accuracy_hand_made():
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]).expand(2, 2, 2)
    masks = torch.tensor([[[True, False], [True, False]], [[False, True], [True, True]]])
    # Image 0: K = 2, top 2 = {(0,0), (0,1)}, one on the mask. Image 1: K = 3, top 3 = {(0,0), (0,1), (1,0)}, two on it.
    torch.testing.assert_close(scores.relevance_rank_accuracy(maps, masks), torch.tensor([0.5, 2 / 3]))


@pytest.mark.parametrize("box", [(0, 0, 6, 6), (26, 26, 32, 32), (10, 10, 16, 16), (0, 0, 32, 32), (31, 0, 32, 1),
                                 (3, 28, 9, 32), (28, 5, 40, 12), (0, 13, 1, 14)])
def test_dilated_pointing_game_mask_is_pointing_game(box):
    gen = torch.Generator().manual_seed(sum(box))
    peaks = torch.arange(SIZE * SIZE)  # one map per pixel, its single peak there: every position checked
    maps = torch.zeros(SIZE * SIZE, SIZE * SIZE)
    maps[peaks, peaks] = 1.0
    maps = torch.cat([maps.view(-1, SIZE, SIZE), torch.rand(64, SIZE, SIZE, generator=gen), torch.zeros(2, SIZE, SIZE)])
    masks = box_mask(box).expand_as(maps)
    expected = scores.pointing_game(maps, box)
    assert torch.equal(scores.pointing_game_mask(maps, masks, tolerance_px=scores.POINTING_TOLERANCE_PX), expected)
    assert expected.any() and not expected[-2:].any()  # the all-zero maps never hit
    assert torch.equal(scores.pointing_game_mask(maps, masks, tolerance_px=0), scores.pointing_game(maps, box, tolerance_px=0))


def test_dilate_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 3, 4] = True
    masks[1, 0, 0] = True
    grown = scores.dilate_masks(masks, 2)
    assert torch.equal(grown[0], box_mask((1, 2, 6, 7), size=8))  # a 5x5 square around the pixel
    assert torch.equal(grown[1], box_mask((0, 0, 3, 3), size=8))  # clipped at the corner
    assert torch.equal(scores.dilate_masks(masks, 0), masks)
    assert scores.dilate_masks(masks, 20).all()
    with pytest.raises(ValueError):
        scores.dilate_masks(masks, -1)


def test_constant_map_scores_the_mask_share_in_energy(batch):
    _, masks = batch
    share = masks.flatten(1).float().mean(1)
    energy = scores.cam_energy_in_mask(torch.full((N, SIZE, SIZE), 0.25), masks)
    torch.testing.assert_close(energy, share, rtol=0, atol=ATOL)
    assert energy.mean().item() == pytest.approx(scores.uniform_energy(masks), abs=ATOL)
    assert scores.uniform_rank_accuracy(masks) == pytest.approx(share.mean().item(), abs=ATOL)


def test_random_ranking_scores_uniform_rank_accuracy_on_average():
    gen = torch.Generator().manual_seed(1)
    masks = torch.stack([box_mask((4, 4, 14, 20)), disc_mask()]).repeat_interleave(2000, dim=0)
    maps = torch.rand(masks.shape, generator=gen)  # a uniformly random ranking per image
    rank = scores.relevance_rank_accuracy(maps, masks)
    # K of 1024 on the mask, so each image's hits are hypergeometric: sd of the mean of 2000 < 0.002.
    assert rank.mean().item() == pytest.approx(scores.uniform_rank_accuracy(masks), abs=0.01)
    hits = scores.pointing_game_mask(maps, masks).float()
    assert hits.mean().item() == pytest.approx(scores.uniform_energy(masks), abs=0.03)
