"""The weighting study: protocol, statistics and a quick run on real ADBench sets."""

import json
import shutil

import numpy as np
import pytest
from conftest import ADBENCH, PED2
from scipy import stats

from mulde.cli import main
from mulde.study import (
    StudyConfig,
    default_variants,
    epochs_for,
    interval,
    load_adbench,
    one_class_splits,
    outcome,
    paired_comparison,
    run_study,
    study_ped2,
)


def test_default_variants_cover_the_sweep():
    variants = {v.name: v for v in default_variants()}
    assert {"sigma2", "gaussian", "gaussian-is"} <= set(variants)
    sweep = [v for v in variants.values() if v.name.count("-") == 2]
    # 3 x 3 sweep minus (0.33, 0.075), which reuses the "gaussian" runs.
    assert len(sweep) == 8
    assert variants["sigma2"].n_seeds == 5
    assert all(v.n_seeds == 3 for v in sweep)
    assert variants["gaussian-is"].importance_sampling
    assert variants["gaussian-0.2-0.05"].window() == pytest.approx((0.1, 0.3))
    # sigma2 is compared on the window of the default Gaussian weighting.
    assert variants["sigma2"].window() == pytest.approx((0.18, 0.48))


def test_one_class_splits_use_normal_rows_only():
    y = np.r_[np.zeros(90), np.ones(10)].astype(int)
    splits = list(one_class_splits(y, 3, 0.5))
    assert len(splits) == 3
    for fit_rows, test_rows in splits:
        assert np.all(y[fit_rows] == 0)
        assert len(fit_rows) == 45
        assert not set(fit_rows) & set(test_rows)
        assert y[test_rows].sum() == 10
    assert not np.array_equal(splits[0][0], splits[1][0])


def test_epochs_for_gives_about_the_steps():
    assert epochs_for(1000, 256, 600) == 150
    assert epochs_for(100, 256, 600) == 600
    assert epochs_for(100_000, 256, 600) == 2


def test_interval_matches_t_distribution():
    values = [0.80, 0.82, 0.85, 0.79, 0.84]
    result = interval(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert result["mean"] == pytest.approx(0.82)
    assert result["low"] == pytest.approx(0.82 - half)
    assert result["high"] == pytest.approx(0.82 + half)
    assert interval([0.5])["low"] is None


def test_interval_clipped_to_unit_range():
    from mulde.study_report import _fmt

    result = interval([0.2, 0.65])
    assert (result["low"], result["high"]) == (0.0, 1.0)
    assert _fmt(result) == "0.4250 [0.0000, 1.0000] (n = 2)"


def test_paired_comparison_detects_consistent_gain():
    reference = [0.80, 0.70, 0.90, 0.85, 0.75]
    better = [r + 0.02 + 0.001 * k for k, r in enumerate(reference)]
    comparison = paired_comparison(better, reference)
    assert comparison["mean_difference"] == pytest.approx(0.022)
    assert comparison["low"] > 0
    assert comparison["wilcoxon_p"] == pytest.approx(0.0625)
    assert comparison["effect_size_dz"] > 10
    assert outcome(comparison) == "win"
    assert outcome(paired_comparison(reference, better)) == "loss"


def test_paired_comparison_noise_is_a_tie():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.7, 0.9, size=6)
    noisy = reference + rng.normal(0, 0.02, size=6) * np.array([1, -1, 1, -1, 1, -1])
    assert outcome(paired_comparison(noisy, reference)) == "tie"


@pytest.fixture
def small_adbench(tmp_path):
    for name in ("42_WBC",):
        source = ADBENCH / f"{name}.npz"
        if not source.is_file():
            pytest.skip(f"{source} is not present")
        shutil.copy(source, tmp_path / source.name)
    return tmp_path


def test_quick_study_writes_outputs(small_adbench, tmp_path):
    out = tmp_path / "study"
    args = ["study", "--quick", "--adbench", str(small_adbench), "--out", str(out)]
    assert main(args + ["--quiet"]) == 0
    for name in ("study.json", "report.md", "report.html", "auc_by_sigma.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "study.json").read_text())
    mulde_runs = [r for r in result["records"] if r["kind"] == "mulde"]
    baselines = [r for r in result["records"] if r["kind"] == "baseline"]
    # Quick: 1 split, 2 seeds for the 3 main variants, 1 for each of 8 sweep ones.
    assert len(mulde_runs) == 3 * 2 + 8
    assert len(baselines) == 5
    for record in mulde_runs:
        assert 0 <= record["full"]["auc"] <= 1
        assert len(record["level_auc_energy"]) == 16
        assert len(record["band_loss"]) == len(result["bands"])
    summary = result["summary"]["datasets"]["42_WBC"]
    assert set(summary["vs_sigma2"]["gaussian"]) == {"full", "focus"}
    assert result["config"]["splits"] == 1
    assert "| sigma2 |" in (out / "report.md").read_text()


def test_adbench_bad_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No .npz files found"):
        load_adbench(tmp_path)
    np.savez(tmp_path / "bad.npz", X=np.ones((4, 2)))
    with pytest.raises(ValueError, match="bad.npz has arrays"):
        load_adbench(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adbench(tmp_path / "missing")


def test_resume_keeps_finished_sets_and_refuses_other_settings(small_adbench, tmp_path):
    out = tmp_path / "study"
    args = ["study", "--quick", "--adbench", str(small_adbench), "--out", str(out)]
    assert main(args + ["--quiet"]) == 0
    first = json.loads((out / "study.json").read_text())

    assert main(args + ["--quiet", "--resume"]) == 0
    resumed = json.loads((out / "study.json").read_text())
    # Nothing ran again: the same records, and the study is complete.
    assert resumed["records"] == first["records"]
    assert resumed["complete"]
    assert resumed["seconds"] >= first["seconds"]

    with pytest.raises(ValueError, match="steps=30, this study has steps=400"):
        run_study(
            StudyConfig.quick(adbench_dir=str(small_adbench), steps=400),
            out,
            resume=True,
        )


def test_adbench_unreadable_or_nan_files_are_named(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz is not a readable \.npz"):
        load_adbench(tmp_path)
    (tmp_path / "empty.npz").unlink()
    X = np.ones((6, 2))
    X[2, 1] = np.nan
    np.savez(tmp_path / "holes.npz", X=X, y=np.array([0, 0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"holes\.npz: X has NaN .* in 1 row"):
        load_adbench(tmp_path)


def test_quick_study_takes_given_splits_and_steps(small_adbench, tmp_path, monkeypatch):
    from mulde import study

    seen = {}

    def record(config, out, resume=False, merge=()):
        seen["config"] = config
        return {"summary": {"across_datasets": {}}}

    monkeypatch.setattr(study, "run_study", record)
    out = str(tmp_path / "s")
    args = ["study", "--quick", "--adbench", str(small_adbench), "--out", out]
    assert main(args + ["--splits", "2", "--steps", "5"]) == 0
    assert (seen["config"].splits, seen["config"].steps) == (2, 5)
    assert seen["config"].main_seeds == 2  # still the quick configuration
    assert main(args) == 0
    assert (seen["config"].splits, seen["config"].steps) == (1, 30)


def test_merge_keeps_the_sets_of_other_studies(small_adbench, tmp_path):
    first, merged = tmp_path / "first", tmp_path / "merged"
    args = ["study", "--quick", "--adbench", str(small_adbench), "--quiet"]
    assert main(args + ["--out", str(first)]) == 0
    records = json.loads((first / "study.json").read_text())["records"]

    merge = ["--merge", str(first / "study.json")]
    assert main(args + ["--out", str(merged)] + merge) == 0
    result = json.loads((merged / "study.json").read_text())
    assert result["records"] == records
    assert result["complete"]
    assert "42_WBC" in result["summary"]["datasets"]


def test_adbench_text_file_named_npz_rejected(tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz is not a readable \.npz") as info:
        load_adbench(tmp_path)
    assert "pickle" not in str(info.value)


def test_video_table_lists_frame_metrics():
    from mulde.study_report import video_table

    frame = {"auc": 0.7, "macro_auc": 0.6, "average_precision": 0.9}
    records = [
        {"dataset": "ped2", "variant": "sigma2", "full": frame},
        {"dataset": "ped2", "variant": "sigma2", "full": dict(frame, auc=0.8)},
        {"dataset": "42_WBC", "variant": "sigma2", "full": {"auc": 0.9}},
    ]
    table = video_table({"records": records})
    assert "### ped2: frame metrics" in table
    assert "| sigma2 | 0.7500 [" in table
    assert "42_WBC" not in table
    assert video_table({"records": records[2:]}) == ""


# 16 frames leave some flow-histogram columns empty.
@pytest.mark.filterwarnings("ignore:.*feature columns are constant")
def test_ped2_part_runs_on_a_small_copy(tmp_path, monkeypatch):
    """study_ped2 fits its PCA, detector and metrics on real Ped2 frames."""
    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    root = tmp_path / "data"
    for source, target in (
        ("training/frames/01", "train/a"),
        ("testing/frames/04", "test/b"),
    ):
        (root / target).mkdir(parents=True)
        for path in sorted((PED2 / source).glob("*.jpg"))[:16]:
            shutil.copy(path, root / target / path.name)
    np.savez(root / "labels.npz", b=np.r_[np.zeros(8), np.ones(8)].astype(np.int8))

    import mulde.video

    real_load = mulde.video.load_dataset

    def load_small(name, path, **_):
        return real_load(
            "generic", path, train_dir="train", test_dir="test", labels="labels.npz"
        )

    monkeypatch.setattr(mulde.video, "load_dataset", load_small)
    config = StudyConfig.quick(
        ped2_root=str(root), ped2_cache_dir=str(tmp_path / "cache")
    )
    variant = next(v for v in default_variants(1, 1) if v.name == "sigma2")
    records: list[dict] = []
    study_ped2([variant], config, records, bands=np.geomspace(1e-3, 1.0, 3))
    assert len(records) == 1
    record = records[0]
    assert record["dataset"] == "ped2"
    assert record["variant"] == "sigma2"
    assert 0.0 <= record["full"]["auc"] <= 1.0
    assert len(record["level_auc_energy"]) == 16


def test_adbench_too_few_or_flat_rows_named(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", X=rng.normal(size=(4, 2)), y=np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match=r"tiny\.npz has 3 normal rows; .* at least"):
        load_adbench(tmp_path)
    (tmp_path / "tiny.npz").unlink()
    np.savez(tmp_path / "flat.npz", X=rng.normal(size=40), y=np.r_[np.zeros(30), 1])
    with pytest.raises(ValueError, match=r"flat\.npz: X has shape \(40,\); it must be"):
        load_adbench(tmp_path)
