"""The main job end to end on real Ped2 clips, and its handling of bad input."""

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PED2

from mulde import MULDE
from mulde.cli import main
from mulde.config import RunConfig

REDUCED = [
    "--max-train-clips", "2",
    "--max-test-clips", "2",
    "--epochs", "2",
    "--hidden-sizes", "64,64",
    "--quiet",
]  # fmt: skip

OUTPUTS = [
    "config.json",
    "metrics.json",
    "scores.csv",
    "detector.safetensors",
    "roc.png",
    "clip_scores.png",
    "auc_by_sigma.png",
    "report.html",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory, cache_dir):
    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    out = tmp_path_factory.mktemp("runs") / "ped2"
    args = ["run", "--dataset", "ped2", "--root", str(PED2), "--out", str(out)]
    code = main(args + ["--cache-dir", str(cache_dir)] + REDUCED)
    assert code == 0
    return out


def test_run_writes_every_output(reduced_run):
    for name in OUTPUTS:
        assert (reduced_run / name).is_file(), name
        assert (reduced_run / name).stat().st_size > 0, name
    assert not list(reduced_run.parent.glob(".*partial*"))


def test_report_shows_environment_and_level_caveat(reduced_run):
    page = (reduced_run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((reduced_run / "metrics.json").read_text())
    assert "<h2>Software and device</h2>" in page
    assert f"<td>{metrics['environment']['torch']}</td>" in page
    assert "must not be used to pick a level" in page


def test_run_metrics_in_range(reduced_run):
    metrics = json.loads((reduced_run / "metrics.json").read_text())
    for key in ("micro_auc", "macro_auc", "average_precision"):
        assert isinstance(metrics[key], float), key
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["weighting"] == "sigma2"
    assert metrics["seed"] == 0
    assert len(metrics["auc_by_level"]["micro_auc"]) == 16
    assert metrics["unsmoothed"]["n_frames"] == 360
    # Ped2 test clips 01 and 02 have 180 frames each, 2 x 180 labelled.
    assert metrics["smoothed"]["single_class_clips"] == []


def test_run_one_score_per_labelled_frame(reduced_run):
    with open(reduced_run / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.load(PED2 / "frame_labels_ped2.npy").ravel()[:360]
    assert len(rows) == 360
    assert [r["clip"] for r in rows[:1]] == ["01"]
    assert [int(r["frame"]) for r in rows[:180]] == list(range(180))
    assert np.array_equal([int(r["label"]) for r in rows], labels)
    assert all(np.isfinite(float(r["score"])) for r in rows)


def test_run_config_and_detector_reload(reduced_run):
    saved = json.loads((reduced_run / "config.json").read_text())
    config = RunConfig.from_dict(saved)
    assert config.detector["hidden_sizes"] == [64, 64]
    assert config.dataset.max_test_clips == 2
    detector = MULDE.load(reduced_run / "detector.safetensors")
    assert detector.hidden_sizes == [64, 64]
    assert detector.levels_.shape == (16,)


def test_second_run_reuses_cached_features(reduced_run, cache_dir, tmp_path, caplog):
    out = tmp_path / "again"
    args = ["run", "--dataset", "ped2", "--root", str(PED2), "--out", str(out)]
    args += ["--cache-dir", str(cache_dir), "--weighting", "gaussian"] + REDUCED
    caplog.set_level("INFO")
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weighting"] == "gaussian"
    assert "0 extracted, 2 cached" in caplog.text


def _reduced_features(cache_dir: Path, lazy: bool):
    from mulde.features.cache import FeatureConfig, extract_dataset
    from mulde.video import load_dataset

    dataset = load_dataset("ped2", PED2)
    dataset = type(dataset)(
        dataset.name, dataset.root, dataset.train[:2], dataset.test[:2]
    )
    config = FeatureConfig.from_dict(RunConfig().features)
    return extract_dataset(dataset, config, cache_dir, verbose=False, lazy=lazy)


@pytest.fixture(scope="module")
def reduced_features(reduced_run, cache_dir):
    """Features of the reduced run's clips, every clip loaded, from its cache."""
    return _reduced_features(cache_dir, lazy=False)


def test_run_pca_equals_pca_of_all_rows(reduced_run, reduced_features):
    from safetensors.numpy import load_file

    from mulde.pipeline import _fit_pca, _stack

    train = reduced_features["train"]
    expected = _fit_pca(_stack(train, "appearance"), 64, 0, "appearance")
    saved = load_file(str(reduced_run / "pca.safetensors"))

    np.testing.assert_array_equal(saved["appearance.components"], expected.components_)
    np.testing.assert_array_equal(saved["appearance.mean"], expected.mean_)


def test_lazy_features_equal_loaded(reduced_features, cache_dir):
    from mulde.features.cache import ClipFeatureFiles

    eager = reduced_features
    lazy = _reduced_features(cache_dir, lazy=True)

    for split in ("train", "test"):
        assert isinstance(lazy[split], ClipFeatureFiles)
        assert list(lazy[split]) == list(eager[split])
        for name, clip in eager[split].items():
            loaded = lazy[split][name]
            np.testing.assert_array_equal(loaded.frame_index, clip.frame_index)
            for group, values in clip.groups.items():
                np.testing.assert_array_equal(loaded.groups[group], values)
        assert lazy[split].frame_counts() == {
            name: clip.n_frames for name, clip in eager[split].items()
        }


def test_run_scores_unchanged_at_pca_cap(reduced_run, cache_dir, tmp_path, monkeypatch):
    from mulde import pipeline

    metrics = json.loads((reduced_run / "metrics.json").read_text())
    # A cap of exactly the training row count still fits the PCA on every row.
    monkeypatch.setattr(pipeline, "PCA_MAX_ROWS", metrics["n_train_rows"][0])
    out = tmp_path / "capped"
    args = ["run", "--dataset", "ped2", "--root", str(PED2), "--out", str(out)]
    assert main(args + ["--cache-dir", str(cache_dir)] + REDUCED) == 0

    capped = (out / "scores.csv").read_text(encoding="utf-8")
    assert capped == (reduced_run / "scores.csv").read_text(encoding="utf-8")


def test_dry_run_prints_config(capsys, tmp_path):
    args = ["run", "--root", "x", "--out", str(tmp_path / "o"), "--dry-run"]
    options = ["--weighting", "gaussian", "--sigma0", "0.3"]
    options += ["--aggregation", "level", "--level-index", "15"]
    assert main(args + options) == 0
    printed = capsys.readouterr()
    config = json.loads(printed.out)
    assert config["detector"]["weighting"] == "gaussian"
    assert config["detector"]["sigma0"] == 0.3
    assert config["detector"]["aggregation"] == "level"
    assert config["detector"]["level_index"] == 15
    assert "dataset root x does not exist" in printed.err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- bad input


def _copy_frames(source: Path, target: Path, count: int) -> None:
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.jpg"))[:count]:
        shutil.copy(path, target / path.name)


@pytest.fixture
def generic(tmp_path):
    """A generic layout with one training and one test clip of real Ped2 frames."""
    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    root = tmp_path / "data"
    _copy_frames(PED2 / "training" / "frames" / "01", root / "train" / "a", 12)
    _copy_frames(PED2 / "testing" / "frames" / "01", root / "test" / "b", 10)
    np.savez(root / "labels.npz", b=np.r_[np.zeros(5), np.ones(5)].astype(np.int8))
    return root


def _run_generic(root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["run", "--dataset", "generic", "--root", str(root), "--out", str(out)]
    args += ["--train-dir", "train", "--test-dir", "test", "--labels", "labels.npz"]
    args += ["--cache-dir", str(tmp_path / "cache")] + REDUCED
    code = main(args)
    return code, capsys.readouterr().err, out


def test_generic_layout_runs(generic, tmp_path, capsys):
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 0, err
    assert (out / "report.html").is_file()


def test_missing_folder_error(generic, tmp_path, capsys):
    shutil.rmtree(generic / "test")
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 2
    assert "test" in err
    assert not out.exists()


def test_empty_clip_error(generic, tmp_path, capsys):
    for path in (generic / "test" / "b").iterdir():
        path.unlink()
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 2
    assert str(generic / "test" / "b") in err
    assert not out.exists()


def test_unreadable_image_error(generic, tmp_path, capsys):
    broken = sorted((generic / "train" / "a").glob("*.jpg"))[3]
    broken.write_bytes(b"this is not a JPEG")
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 2
    assert broken.name in err
    assert not out.exists()
    assert not list(tmp_path.glob(".run.partial*"))


def test_truncated_video_error(generic, tmp_path, capsys):
    frames = [
        cv2.imread(str(p)) for p in sorted((generic / "test" / "b").glob("*.jpg"))
    ]
    shutil.rmtree(generic / "test" / "b")
    video = generic / "test" / "b.avi"
    writer = cv2.VideoWriter(
        str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (360, 240)
    )
    for frame in frames:
        writer.write(frame)
    writer.release()
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 2
    assert "b.avi" in err
    assert not out.exists()


def test_label_count_mismatch_error(generic, tmp_path, capsys):
    np.savez(generic / "labels.npz", b=np.zeros(7, dtype=np.int8))
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 2
    assert "labels.npz" in err
    assert "7" in err
    assert "10" in err
    assert not out.exists()


def test_unknown_config_key_error(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"detector": {"hidden_size": 3}}))
    args = ["run", "--root", "x", "--out", str(tmp_path / "o"), "--config", str(config)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Unknown detector key(s) hidden_size; valid keys:" in err


def test_training_on_the_test_clips_rejected(generic, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--dataset", "generic", "--root", str(generic), "--out", str(out)]
    args += ["--train-dir", "test", "--test-dir", "test", "--labels", "labels.npz"]
    assert main(args + ["--cache-dir", str(tmp_path / "cache")] + REDUCED) == 2
    assert "both training and test clips" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_prints_every_feature_setting(capsys):
    from mulde.cli import main

    code = main(["run", "--root", "x", "--out", "o", "--dry-run"])

    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["features"]["mode"] == "grid"
    assert printed["features"]["grid_cell"] == 20
    assert printed["features"]["proposals"]["threshold"] == 20.0
    assert printed["scoring"]["groups"] == ["velocity", "appearance", "geometry"]
    # The printed configuration is a valid --config file.
    assert RunConfig.from_dict(printed).features == printed["features"]


def test_single_class_labels_stop_before_features(generic, tmp_path, capsys):
    np.savez(generic / "labels.npz", b=np.zeros(10, np.int8))
    code, err, out = _run_generic(generic, tmp_path, capsys)
    assert code == 2
    assert "Every labelled test frame is normal" in err
    assert not (tmp_path / "cache").exists()
    assert not out.exists()


def test_out_inside_clip_folder_rejected(generic, tmp_path, capsys):
    out = generic / "train" / "run"
    args = ["run", "--dataset", "generic", "--root", str(generic), "--out", str(out)]
    args += ["--train-dir", "train", "--test-dir", "test", "--labels", "labels.npz"]
    args += ["--cache-dir", str(tmp_path / "cache")] + REDUCED
    assert main(args) == 2
    assert "inside the clip folder" in capsys.readouterr().err
    assert not out.exists()


def test_score_new_clips_matches_run(reduced_run, cache_dir, tmp_path):
    # The reduced run scored test clips 01 and 02; scoring a copy of clip 02 with
    # the saved run must give its scores again.
    clips = tmp_path / "new"
    _copy_frames(PED2 / "testing" / "frames" / "02", clips / "02", 1000)
    out = tmp_path / "scores.csv"
    args = ["score", "--run", str(reduced_run), "--clips", str(clips)]
    args += ["--out", str(out), "--cache-dir", str(cache_dir), "--quiet"]
    assert main(args) == 0

    with out.open(encoding="utf-8") as handle:
        new = list(csv.DictReader(handle))
    with (reduced_run / "scores.csv").open(encoding="utf-8") as handle:
        old = [row for row in csv.DictReader(handle) if row["clip"] == "02"]
    assert len(new) == len(old) > 0
    assert [row["frame"] for row in new] == [row["frame"] for row in old]
    # The same features, projection layout and detector give the same digits.
    for key in ("score", "score_smoothed"):
        assert [row[key] for row in new] == [row[key] for row in old]


def test_score_with_labels_reports_run_metrics(reduced_run, cache_dir, tmp_path):
    # Clip 02 with its labels from the run: its AUC alone is the run's clip AUC.
    clips = tmp_path / "new"
    _copy_frames(PED2 / "testing" / "frames" / "02", clips / "02", 1000)
    with (reduced_run / "scores.csv").open(encoding="utf-8") as handle:
        old = [row for row in csv.DictReader(handle) if row["clip"] == "02"]
    labels = np.array([int(row["label"]) for row in old], dtype=np.int8)
    np.savez(tmp_path / "labels.npz", **{"02": labels})
    out = tmp_path / "scores.csv"
    args = ["score", "--run", str(reduced_run), "--clips", str(clips)]
    args += ["--out", str(out), "--cache-dir", str(cache_dir), "--quiet"]
    assert main(args + ["--labels", str(tmp_path / "labels.npz")]) == 0

    with out.open(encoding="utf-8") as handle:
        new = list(csv.DictReader(handle))
    assert [row["label"] for row in new] == [row["label"] for row in old]
    metrics = json.loads((tmp_path / "scores.metrics.json").read_text())
    run_metrics = json.loads((reduced_run / "metrics.json").read_text())
    expected = run_metrics["smoothed"]["clip_auc"]["02"]
    assert metrics["micro_auc"] == pytest.approx(expected, abs=1e-12)
    assert metrics["macro_auc"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= metrics["unsmoothed"]["micro_auc"] <= 1.0


def test_score_labels_of_wrong_length_rejected(reduced_run, tmp_path, capsys):
    clips = tmp_path / "new"
    _copy_frames(PED2 / "testing" / "frames" / "02", clips / "02", 12)
    np.savez(tmp_path / "labels.npz", **{"02": np.r_[np.zeros(5), np.ones(5)]})
    out = tmp_path / "scores.csv"
    args = ["score", "--run", str(reduced_run), "--clips", str(clips)]
    args += ["--out", str(out), "--labels", str(tmp_path / "labels.npz"), "-q"]
    assert main(args) == 2
    assert "have 10 frames but" in capsys.readouterr().err
    assert not out.exists()


def test_score_needs_a_finished_run(tmp_path, capsys):
    args = ["score", "--run", str(tmp_path), "--clips", str(tmp_path)]
    assert main(args + ["--out", str(tmp_path / "s.csv")]) == 2
    assert "config.json not found" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_score_rejects_scrambled_projection(reduced_run, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(reduced_run, run)
    arrays = load_file(str(run / "pca.safetensors"))
    components = arrays["appearance.components"]
    arrays["appearance.components"] = np.ascontiguousarray(
        components.ravel(order="F").reshape(components.shape)
    )
    save_file(arrays, str(run / "pca.safetensors"))
    args = ["score", "--run", str(run), "--clips", str(tmp_path)]
    assert main(args + ["--out", str(tmp_path / "s.csv")]) == 2
    assert "not orthonormal" in capsys.readouterr().err


def test_seeds_run_each_seed_and_summarise(generic, tmp_path, capsys):
    out = tmp_path / "seeds"
    args = ["run", "--dataset", "generic", "--root", str(generic), "--out", str(out)]
    args += ["--train-dir", "train", "--test-dir", "test", "--labels", "labels.npz"]
    args += ["--cache-dir", str(tmp_path / "cache")] + REDUCED
    assert main(args + ["--seeds", "0,1"]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    micro = [
        json.loads((out / f"seed-{s}" / "metrics.json").read_text())["micro_auc"]
        for s in (0, 1)
    ]
    assert summary["seeds"] == [0, 1]
    assert summary["micro_auc"]["mean"] == pytest.approx(np.mean(micro))
    assert summary["micro_auc"]["std"] == pytest.approx(np.std(micro, ddof=1))
    assert summary["micro_auc"]["min"] == min(micro)
    # Seed 0 of the series is the same run as --seed 0 alone.
    single = tmp_path / "single"
    args[args.index(str(out))] = str(single)
    assert main(args + ["--seed", "0"]) == 0
    alone = json.loads((single / "metrics.json").read_text())["micro_auc"]
    assert alone == micro[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "0"], "at least two different seeds"),
        (["--seeds", "0,0"], "at least two different seeds"),
        (["--seeds", "0,1", "--seed", "2"], "not both"),
        (["--seeds", "0,-1"], "-1 not in [0, 2**32)"),
        (["--seeds", "0,-1", "--dry-run"], "-1 not in [0, 2**32)"),
    ],
)
def test_seeds_option_errors(tmp_path, capsys, extra, message):
    args = ["run", "--dataset", "ped2", "--root", str(PED2), "--out", str(tmp_path)]
    assert main(args + extra + ["--quiet"]) == 2
    assert message in capsys.readouterr().err
    # Rejected before any run started.
    assert list(tmp_path.iterdir()) == []


def test_seeds_option_needs_integers(tmp_path, capsys):
    args = ["run", "--dataset", "ped2", "--root", str(PED2), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--seeds", "0,x"])
    assert exit_info.value.code == 2
    assert "comma-separated list of integers" in capsys.readouterr().err
