"""Figures name the CAM method they show, plot the layer sweep as a ratio to a uniform map on a log axis,
say which prediction is clean and which patched, and keep the suptitle clear of the first row."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from gradcam_repro.measure.results import CamScores, Interval  # noqa: E402
from gradcam_repro.report import figures  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHIP, AIRPLANE, FROG = CLASSES.index("ship"), CLASSES.index("airplane"), CLASSES.index("frog")
BOX = (20, 20, 28, 28)
UNIFORM = {"energy_in_box": 0.05, "pointing": 0.1}


@pytest.fixture
def closing():
    """Collects the figures a test makes and closes them afterwards."""
    made = []
    yield made.append
    for fig in made:
        figures.close(fig)


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def maps(n, seed=0):
    return torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(seed))


def sweep_input(energies, pointing, layers=("layer2", "layer3", "layer4.1")):
    """One model's per-layer scores on patched target images: energies and pointing rates are (mean, low, high) per layer."""
    return {lay: CamScores(Interval(*e, n=20), Interval(*p, n=20)) for lay, e, p in zip(layers, energies, pointing)}


def all_texts(fig):
    """Every piece of text a reader sees: suptitle, panel titles, axis labels, legend entries."""
    texts = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        if ax.get_legend():
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    return texts


def errorbar_series(ax):
    """(x, y, low, high) of each errorbar series on the axes, in plotting order."""
    series = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            data_line, _, (bars, *_) = container.lines
            segments = bars.get_segments()
            series.append((np.asarray(data_line.get_xdata()), np.asarray(data_line.get_ydata()),
                           np.array([s[0][1] for s in segments]), np.array([s[1][1] for s in segments])))
    return series


# --------------------------------------------------------------------------- the method's name


def test_the_histogram_names_the_method_it_was_given(closing):
    fig = figures.energy_histograms({"baseline": maps(6), "biased": maps(6, seed=1)}, BOX, 0.0625, "energy", method="LayerCAM")
    closing(fig)
    (ax,) = fig.axes
    assert "LayerCAM" in ax.get_xlabel()
    assert not any("Grad-CAM" in t for t in all_texts(fig))


def test_the_histogram_still_says_grad_cam_by_default(closing):
    fig = figures.energy_histograms({"baseline": maps(6)}, BOX, 0.0625, "energy")
    closing(fig)
    assert "Grad-CAM" in fig.axes[0].get_xlabel()


def test_the_sweep_names_the_method_it_was_given_and_never_grad_cam(closing):
    cam = {"biased": sweep_input([(0.1, 0.08, 0.12)] * 3, [(0.5, 0.4, 0.6)] * 3)}
    fig = figures.layer_sweep(cam, UNIFORM, method="LayerCAM")
    closing(fig)
    assert "LayerCAM" in fig._suptitle.get_text()
    assert all("LayerCAM" in ax.get_title() for ax in fig.axes)
    assert not any("Grad-CAM" in t for t in all_texts(fig))


# --------------------------------------------------------------------------- the layer sweep


def test_the_sweep_plots_energy_as_a_ratio_to_the_uniform_map_on_a_log_axis(closing):
    cam = {"baseline": sweep_input([(0.05, 0.04, 0.06), (0.06, 0.05, 0.08), (0.04, 0.02, 0.05)], [(0.1, 0.0, 0.2)] * 3),
           "biased": sweep_input([(0.10, 0.08, 0.12), (0.20, 0.15, 0.25), (0.30, 0.28, 0.33)], [(0.9, 0.8, 1.0)] * 3)}
    fig = figures.layer_sweep(cam, UNIFORM)
    closing(fig)
    energy_ax = fig.axes[0]
    assert energy_ax.get_yscale() == "log"
    assert [t.get_text() for t in energy_ax.get_xticklabels()] == ["layer2", "layer3", "layer4.1"]
    (_, base_y, base_low, base_high), (_, biased_y, biased_low, biased_high) = errorbar_series(energy_ax)
    np.testing.assert_allclose(base_y, [1.0, 1.2, 0.8])
    np.testing.assert_allclose(biased_y, [2.0, 4.0, 6.0])
    np.testing.assert_allclose(biased_low, [1.6, 3.0, 5.6])
    np.testing.assert_allclose(biased_high, [2.4, 5.0, 6.6])
    np.testing.assert_allclose(base_low, [0.8, 1.0, 0.4])
    np.testing.assert_allclose(base_high, [1.2, 1.6, 1.0])
    bottom, top = energy_ax.get_ylim()
    assert bottom <= min(base_y) and top >= max(biased_high)


def test_the_sweep_marks_uniform_at_1_and_the_points_at_the_patch_threshold_at_2(closing):
    cam = {"biased": sweep_input([(0.1, 0.08, 0.12)] * 3, [(0.5, 0.4, 0.6)] * 3)}
    fig = figures.layer_sweep(cam, UNIFORM)
    closing(fig)
    energy_ax = fig.axes[0]
    flat = {line.get_label(): line for line in energy_ax.get_lines()
            if len(set(line.get_ydata())) == 1 and line.get_label() and not line.get_label().startswith("_")}
    threshold = [line for label, line in flat.items() if "points at the patch" in label]
    uniform = [line for label, line in flat.items() if label.startswith("uniform map")]
    assert len(uniform) == 1 and len(threshold) == 1
    assert uniform[0].get_ydata()[0] == 1.0 and uniform[0].get_linestyle() == "--"
    assert threshold[0].get_ydata()[0] == 2.0 and threshold[0].get_linestyle() == ":"
    assert "2x uniform" in threshold[0].get_label()
    low, high = energy_ax.get_ylim()
    assert low < 1.0 and high > 2.0


def test_the_sweep_keeps_the_pointing_game_as_a_rate_on_a_linear_axis(closing):
    cam = {"biased": sweep_input([(0.1, 0.08, 0.12)] * 3, [(0.25, 0.1, 0.4), (0.5, 0.4, 0.6), (0.75, 0.6, 0.9)])}
    fig = figures.layer_sweep(cam, UNIFORM)
    closing(fig)
    pointing_ax = fig.axes[1]
    assert pointing_ax.get_yscale() == "linear" and pointing_ax.get_ylim() == (0, 1)
    ((_, y, low, high),) = errorbar_series(pointing_ax)
    np.testing.assert_allclose(y, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(low, [0.1, 0.4, 0.6])
    np.testing.assert_allclose(high, [0.4, 0.6, 0.9])
    assert any(list(line.get_ydata()) == [0.1, 0.1] for line in pointing_ax.get_lines())


def test_non_positive_energies_are_drawn_at_a_floor_that_stays_in_view(closing):
    cam = {"biased": sweep_input([(0.0, 0.0, 0.01), (0.1, 0.0, 0.2), (0.1, 0.08, 0.12)], [(0.5, 0.4, 0.6)] * 3)}
    fig = figures.layer_sweep(cam, UNIFORM)
    closing(fig)
    energy_ax = fig.axes[0]
    ((_, y, low, high),) = errorbar_series(energy_ax)
    assert np.all(np.isfinite(y)) and np.all(y > 0) and np.all(low > 0)
    np.testing.assert_allclose(y, [figures.RATIO_FLOOR, 2.0, 2.0])
    np.testing.assert_allclose(low, [figures.RATIO_FLOOR, figures.RATIO_FLOOR, 1.6])
    np.testing.assert_allclose(high, [0.2, 4.0, 2.4])
    assert energy_ax.get_ylim()[0] <= figures.RATIO_FLOOR


# --------------------------------------------------------------------------- the counterfactual gallery


def gallery(n=1, title="pasting the patch on non-frog test images"):
    preds = {"baseline": (torch.full((n,), SHIP), torch.full((n,), SHIP)),
             "biased": (torch.full((n,), SHIP), torch.full((n,), AIRPLANE))}
    return figures.counterfactual_gallery(images(n), images(n, seed=1), preds, {"baseline": maps(n), "biased": maps(n, 1)},
                                          CLASSES, title, box=BOX)


def test_the_gallery_says_which_prediction_is_clean_and_which_patched(closing):
    fig = gallery()
    closing(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["original", "patch pasted", "baseline\nclean: ship\npatched: ship",
                      "biased\nclean: ship\npatched: airplane"]
    assert not any("->" in t for t in titles)


# --------------------------------------------------------------------------- the suptitle


def assert_suptitle_clear_of_the_panels(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert suptitle.y1 <= fig.bbox.y1 + 0.5, "the suptitle is cut off at the top"
    for ax in fig.axes:
        for what, extent in (("panel", ax.get_window_extent(renderer)), ("title", ax.title.get_window_extent(renderer))):
            if extent.width > 0 and extent.height > 0:
                assert extent.y1 < suptitle.y0, f"{what} {ax.get_title()!r} reaches into the suptitle"


SUPTITLED = {
    "counterfactual_gallery, one row": lambda: gallery(1),
    "counterfactual_gallery, ten rows": lambda: gallery(10),
    "cam_grid": lambda: figures.cam_grid(images(10), maps(10), torch.arange(10), torch.arange(10).roll(1), CLASSES,
                                         "biased model on patched frog images", box=BOX, cam_label="LayerCAM"),
    "side_by_side": lambda: figures.side_by_side(images(8), {"baseline": maps(8), "biased": maps(8, 1)},
                                                 {"baseline": torch.arange(8), "biased": torch.full((8,), FROG)},
                                                 CLASSES, "both models", box=BOX),
    "across_layers": lambda: figures.across_layers(images(1)[0], {m: {lay: maps(1)[0] for lay in ["layer2", "layer3", "layer4.1"]}
                                                                  for m in ["baseline", "biased"]}, "one image by layer", box=BOX),
    "sanity_cascade": lambda: figures.sanity_cascade(images(1)[0], {s: maps(1)[0] for s in ["original", "fc", "layer4.1"]},
                                                     "cascade"),
    "explanation": lambda: figures.explanation(images(1)[0], {"baseline": maps(1)[0], "biased": maps(1, 1)[0]},
                                               {m: [("frog", 0.5), ("cat", 0.3), ("dog", 0.1)] for m in ["baseline", "biased"]},
                                               "my_photo.jpg"),
    "layer_sweep": lambda: figures.layer_sweep({"biased": sweep_input([(0.1, 0.08, 0.12)] * 3, [(0.5, 0.4, 0.6)] * 3)},
                                               UNIFORM),
}


@pytest.mark.parametrize("make", SUPTITLED.values(), ids=SUPTITLED.keys())
def test_the_suptitle_sits_above_every_panel_and_its_title(make, closing):
    fig = make()
    closing(fig)
    assert_suptitle_clear_of_the_panels(fig)


# --------------------------------------------------------------------------- the grid


def test_the_grid_puts_pairs_per_row_pairs_in_a_row_and_titles_overlays_with_the_method(closing):
    fig = figures.cam_grid(images(3), maps(3), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), CLASSES, "grid",
                           cam_label="LayerCAM")
    closing(fig)
    assert len(fig.axes) == 2 * 2 * figures.PAIRS_PER_ROW
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:6] == ["true: airplane\npred: airplane", "LayerCAM", "true: automobile\npred: automobile", "LayerCAM",
                          "true: bird\npred: cat", "LayerCAM"]
    assert titles[6:] == ["", ""]
