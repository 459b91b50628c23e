"""The command line: one-line errors with exit code 2 that leave earlier results alone."""

import subprocess
import sys

import pytest

from gradcam_repro.cli import build_parser, config_from_args, main, parse_color


@pytest.fixture
def previous_run(tmp_path):
    """An output folder holding results of an earlier run, which bad input must not touch."""
    out = tmp_path / "run"
    (out / "experiments" / "0123456789abcdef").mkdir(parents=True)
    (out / "summary.md").write_text("earlier results")
    (out / "experiments" / "0123456789abcdef" / "model.pt").write_bytes(b"earlier checkpoint")
    return out


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--bias-class", "toad"], "unknown class 'toad'; fix: pass --bias-class as one of airplane, automobile"),
        (["--patch-size", "40"], "patch of 40 px at offset 0 px does not fit a 32x32 px image"),
        (["--patch-size", "30", "--patch-offset", "4"], "patch of 30 px at offset 4 px does not fit"),
        (["--bias-fraction", "1.5"], "--bias-fraction must be in [0, 1], got 1.5"),
        (["--bias-fraction", "-0.1"], "--bias-fraction must be in [0, 1], got -0.1"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--cam-layer", "layer5.conv"], "unknown layer 'layer5.conv'; fix: pass --cam-layer as one of"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--seed", "-1"], "--seed must be in 0..4294967295 (numpy's seed range), got -1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_overwritten(flags, expected, previous_run, capsys):
    before = snapshot(previous_run)
    code = main(["run", "--preset", "smoke", "--dataset", "cifar10", "--out", str(previous_run), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(previous_run) == before


def test_unknown_layer_lists_valid_layers(tmp_path, capsys):
    main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(tmp_path), "--cam-layer", "layer9"])
    err = capsys.readouterr().err
    for valid in ("layer4.1.conv2", "layer3", "layer2.0.conv1"):
        assert valid in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write to output folder" in err and "--out" in err
    assert blocker.read_text() == "not a folder"


def test_missing_data_root(tmp_path, monkeypatch, capsys):
    from gradcam_repro.data import cifar10 as data

    monkeypatch.setattr(data, "_try_download", lambda root: "no network here")
    code = main(["run", "--preset", "smoke", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no CIFAR-10 under" in err and "--data-root" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "summary.md").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="--epochs must be >= 1"):
        main(["--debug", "run", "--preset", "smoke", "--dataset", "shapes", "--out", str(tmp_path), "--epochs", "0"])


@pytest.mark.slow
def test_console_script_exit_code_and_help():
    result = subprocess.run([sys.executable, "-m", "gradcam_repro", "run", "--epochs", "0", "--dataset", "shapes"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == "gradcam-repro: error: --epochs must be >= 1, got 0"
    help_text = subprocess.run([sys.executable, "-m", "gradcam_repro", "run", "--help"], capture_output=True, text=True).stdout
    for flag in ("--preset", "--dataset", "--data-root", "--out", "--device", "--seed", "--epochs", "--batch-size", "--lr",
                 "--train-subset", "--patch-size", "--patch-color", "--bias-class", "--bias-fraction", "--cam-layer",
                 "--show", "--debug"):
        assert flag in help_text


def test_patch_color_parsing():
    assert parse_color("255,255,0") == (255, 255, 0)
    assert parse_color("Yellow") == (255, 255, 0)
    for bad in ("255,255", "256,0,0", "a,b,c", "purple-ish"):
        with pytest.raises(Exception, match="not a colour"):
            parse_color(bad)


def test_a_sample_size_flag_can_ask_for_every_image_where_the_preset_samples(capsys):
    def config(*flags):
        return config_from_args(build_parser().parse_args(["run", "--preset", "smoke", *flags]))

    assert config().counterfactual_images == 200  # the smoke preset samples
    assert config("--counterfactual-images", "all", "--cam-images", "ALL").counterfactual_images is None
    assert config("--cam-images", "all").cam_images is None and config("--cam-images", "30").cam_images == 30
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--counterfactual-images", "many"])
    assert "'many' is not a number of images; use a whole number or 'all'" in capsys.readouterr().err


def test_an_explicit_bias_class_is_never_silently_replaced(tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--dataset", "shapes", "--bias-class", "frog", "--out", str(tmp_path)])
    assert code == 2 and "unknown class 'frog'; fix: pass --bias-class as one of circle" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, broken, expected",
    [
        ("report", "metrics.json", r"cannot read \S*metrics\.json \(truncated or not JSON.*fix: run `gradcam-repro evaluate"),
        ("evaluate", "run.json", r"cannot read \S*run\.json \(truncated or not JSON.*fix: pass a folder written by"),
    ],
)
def test_a_truncated_saved_file_is_a_one_line_error_naming_it_and_the_fix(tmp_path, capsys, command, broken, expected):
    import re

    run = tmp_path / "run"
    run.mkdir()
    (run / broken).write_text('{"config": {"preset": "quick", "see')  # cut off mid-write
    (run / "REPORT.md").write_text("earlier report")
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (run / "REPORT.md").read_text() == "earlier report"
