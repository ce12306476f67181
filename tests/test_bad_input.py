"""Bad input found by trying to break the product: each case raises clearly, early."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import empty_grid_clip
from sklearn.decomposition import PCA

from mulde import MULDE
from mulde.cli import main
from mulde.config import RunConfig
from mulde.pipeline import GroupModel, check_output_folder

TINY = {"hidden_sizes": (16, 16), "epochs": 1, "random_state": 0, "device": "cpu"}


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(64, 4))


def test_zero_features_rejected():
    with pytest.raises(ValueError, match=r"has 0 feature\(s\)"):
        MULDE(**TINY).fit(np.zeros((5, 0)))


def test_huge_values_still_standardised(X):
    detector = MULDE(**(TINY | {"epochs": 5})).fit(X * 1e20)
    assert np.all(np.isfinite(detector.scale_))
    scores = detector.decision_function(np.vstack([X[:1], X[:1] * 1000]) * 1e20)
    assert scores[1] > scores[0]


def test_values_beyond_float32_rejected(X):
    with pytest.raises(ValueError, match="beyond float32"):
        MULDE(**TINY).fit(X * 1e39)


def test_numpy_scalar_params_can_be_saved(X, tmp_path):
    params = TINY | {"random_state": np.int64(3), "sigma_low": np.float32(0.01)}
    path = MULDE(**params).fit(X).save(tmp_path / "m.safetensors")
    loaded = MULDE.load(path)
    assert loaded.random_state == 3
    assert loaded.sigma_low == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"dataset": {"max_train_clips": 0}}, "max_train_clips=0 must be a positive"),
        ({"dataset": {"max_train_clips": -1}}, "max_train_clips=-1 must be a positive"),
        ({"scoring": {"smoothing_sigma": float("nan")}}, "must be a finite number"),
        ({"scoring": {"smoothing_sigma": float("inf")}}, "must be a finite number"),
        ({"scoring": {"smoothing_sigma": 1e9}}, "use at most 1000"),
        ({"scoring": {"groups": "velocity"}}, "must be a list of strings"),
        ({"scoring": {"groups": []}}, "must be a non-empty list"),
        ({"seed": -1}, r"seed=-1 must be an integer in \[0, 2\*\*32\)"),
        ({"seed": 2**40}, "must be an integer in"),
        ({"detector": {"epochs": "ten"}}, "epochs='ten' must be an integer"),
        ({"detector": {"n_levels": "16"}}, "n_levels='16' must be an integer, not str"),
        ({"detector": {"sigma_low": "0.001"}}, "sigma_low='0.001' must be a number"),
        ({"detector": {"importance_sampling": 1}}, "must be true or false, not int"),
        ({"features": {"flow_gap": "4"}}, "features.flow_gap='4' must be an integer"),
        ({"features": {"crop_context": "0.1"}}, "crop_context='0.1' must be a number"),
        ({"features": {"proposals": "x"}}, "features.proposals='x' must be"),
        (
            {"features": {"proposals": {"threshold": "20"}}},
            "features.proposals.threshold='20' must be a number",
        ),
        ({"features": {"magnitude_edges": [1, "2"]}}, "must be a list of numbers;"),
        ({"features": {"no_such_key": 1}}, "no_such_key"),
        ({"scoring": {"smoothing_sigma": "3"}}, "smoothing_sigma='3' must be a number"),
        ({"verbose": "1"}, "verbose='1' must be an integer"),
        ({"seed": True}, "seed=True must be an integer, not bool"),
        ({"detector": {"importance_sampling": "false"}}, "must be true or false"),
        ({"detector": {"hidden_sizes": "64"}}, "must be a non-empty list of positive"),
        ({"detector": {"learning_rate": float("inf")}}, "must be finite and > 0"),
        ({"detector": {"n_levels": 100_000}}, "n_levels=100000 is more than 1024"),
        ({"detector": {"n_levels": 0}}, "n_levels"),
        ({"detector": {"aggregation": "mode"}}, "Unknown aggregation 'mode'"),
        ({"detector": {"activation": "tanh"}}, "Unknown activation 'tanh'"),
        ({"detector": {"precision": "half"}}, "Unknown precision 'half'"),
        ({"detector": {"device": "mps"}}, "device='mps' is not supported"),
        ({"detector": {"reg_covar": -1.0}}, "reg_covar=-1.0 must be finite"),
        (
            {"detector": {"aggregation": "level", "level_index": 99}},
            r"level_index=99 must be an integer in \[0, 16\)",
        ),
        ({"detector": {"beta": -1.0}}, "beta=-1.0 must be >= 0"),
    ],
)
def test_config_values_checked_before_work(section, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(section)


def test_config_file_checked_by_dry_run(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"detector": {"epochs": "ten"}}))
    args = ["run", "--root", "x", "--out", str(tmp_path / "o"), "--config", str(config)]
    assert main(args + ["--dry-run"]) == 2
    assert "epochs='ten'" in capsys.readouterr().err


def test_config_dataset_name_kept(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"dataset": {"name": "generic", "train_dir": "a"}}))
    args = ["run", "--out", str(tmp_path / "o"), "--config", str(config), "--dry-run"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["dataset"]["name"] == "generic"


def test_frame_mode_scores_its_own_groups():
    config = RunConfig.from_dict({"features": {"mode": "frame"}})
    assert config.feature_groups() == ["appearance", "motion"]
    assert RunConfig().feature_groups() == ["velocity", "appearance", "geometry"]


def test_empty_out_rejected():
    with pytest.raises(ValueError, match="--out is empty"):
        check_output_folder("")


def test_out_below_a_file_rejected(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="Cannot write the run folder"):
        check_output_folder(tmp_path / "f.txt" / "sub")


def test_out_with_folder_of_output_name_rejected(tmp_path):
    (tmp_path / "run" / "config.json").mkdir(parents=True)
    (tmp_path / "run" / "config.json" / "notes.txt").write_text("keep")
    with pytest.raises(IsADirectoryError, match="config.json is a folder"):
        check_output_folder(tmp_path / "run")
    assert (tmp_path / "run" / "config.json" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["detector.safetensors", "pca-velocity.safetensors"])
def test_out_with_folder_of_model_name_rejected(tmp_path, name):
    (tmp_path / "run" / name).mkdir(parents=True)
    (tmp_path / "run" / name / "notes.txt").write_text("keep")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_folder(tmp_path / "run")
    assert (tmp_path / "run" / name / "notes.txt").read_text() == "keep"


def test_glob_characters_in_out_keep_other_staging(tmp_path):
    other = tmp_path / ".rx.partial-keep"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    check_output_folder(tmp_path / "r*")
    assert (other / "notes.txt").read_text() == "keep"


def test_stale_staging_folder_removed(tmp_path):
    stale = tmp_path / ".run.partial-abc"
    stale.mkdir()
    (stale / "scores.csv").write_text("half")
    check_output_folder(tmp_path / "run")
    assert not stale.exists()


def test_clip_without_objects_transforms_to_empty():
    rows = np.random.default_rng(0).normal(size=(50, 10))
    model = GroupModel(["appearance"], [PCA(3).fit(rows)], detector=None)
    empty = model.transform({"appearance": np.zeros((0, 10), np.float32)})
    assert empty.shape == (0, 3)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--splits", "0"], "--splits=0 must be at least 1"),
        (["--max-datasets", "-1"], "--max-datasets=-1 must be at least 1"),
        (["--steps", "0"], "--steps=0 must be at least 1"),
    ],
)
def test_study_counts_checked(tmp_path, capsys, option, message):
    out = tmp_path / "study"
    args = ["study", "--adbench", str(tmp_path), "--out", str(out)] + option
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_empty_out_from_the_command_line_rejected(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--dataset", "generic", "--root", str(tmp_path), "--out", ""]
    assert main(args) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_publish_removes_model_files_of_an_earlier_run(tmp_path):
    from mulde.pipeline import _publish

    out, staging = tmp_path / "run", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    for name in ("detector-velocity.safetensors", "pca-velocity.safetensors"):
        (out / name).write_text("per-group run")
    (out / "notes.txt").write_text("the user's own file")
    (staging / "detector.safetensors").write_text("concat run")

    _publish(staging, out)

    assert sorted(p.name for p in out.iterdir()) == [
        "detector.safetensors",
        "notes.txt",
    ]


def test_config_file_not_utf8_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes('{"seed": 1, "x": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ValueError, match="c.json is not UTF-8 text"):
        RunConfig.from_file(path)
    with pytest.raises(ValueError, match="is a folder"):
        RunConfig.from_file(tmp_path)


def _saved_model(X, folder: Path) -> tuple[Path, dict, dict]:
    """Save a small fitted detector; return its path, header and arrays."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = (
        MULDE(hidden_sizes=(8,), epochs=1, random_state=0)
        .fit(X)
        .save(folder / "d.safetensors")
    )
    with safe_open(str(path), framework="np") as reader:
        header = json.loads(reader.metadata()["mulde"])
    return path, header, load_file(str(path))


def _rewrite_model(path: Path, header: dict, arrays: dict) -> None:
    from safetensors.numpy import save_file

    save_file(arrays, str(path), metadata={"mulde": json.dumps(header)})


def test_damaged_model_header_names_the_file(X, tmp_path):
    path, header, arrays = _saved_model(X, tmp_path)
    del header["params"]
    _rewrite_model(path, header, arrays)
    with pytest.raises(ValueError, match="d.safetensors has a damaged mulde header"):
        MULDE.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"use_score_norms": True}, "level_mean has shape"),
        ({"aggregation": "max"}, "not those that aggregation 'max' saves"),
        ("nan weights", "NaN or infinite network weights"),
    ],
)
def test_edited_model_file_rejected_on_load(X, tmp_path, edit, message):
    path, header, arrays = _saved_model(X, tmp_path)
    if edit == "nan weights":
        name = next(key for key in arrays if key.startswith("network."))
        arrays[name] = np.full_like(arrays[name], np.nan)
    else:
        header["params"] |= edit
    _rewrite_model(path, header, arrays)

    with pytest.raises(ValueError, match=message) as info:
        MULDE.load(path)
    assert "d.safetensors" in str(info.value)


def test_unknown_scoring_group_rejected_before_work():
    with pytest.raises(ValueError, match=r"scoring.groups has \['pose'\]"):
        RunConfig.from_dict({"scoring": {"groups": ["velocity", "pose"]}})


def test_scores_of_no_rows_are_empty(X):
    detector = MULDE(hidden_sizes=(8,), epochs=1, random_state=0).fit(X)
    assert detector.decision_function(np.zeros((0, X.shape[1]))).shape == (0,)
    assert detector.score_samples(np.zeros((0, X.shape[1]))).shape == (0,)


def test_cache_folder_that_is_a_file_named(tmp_path):
    from mulde.pipeline import check_writable_folder

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="Cannot write the feature cache folder"):
        check_writable_folder(blocker)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"features": {"grid_cell": 100_000}}, "grid_cell must be between 4 and 512"),
        ({"features": {"grid_cell": 2}}, "grid_cell must be between 4 and 512"),
        ({"features": {"device": "cuda:7"}}, "features.device: device='cuda:7'"),
        ({"features": {"device": "tpu"}}, "features.device: Invalid device 'tpu'"),
        ({"features": None}, "features section must be a JSON object"),
        ({"features": 5}, "features section must be a JSON object"),
        ({"features": [1, 2]}, "features section must be a JSON object"),
        ({"features": "grid"}, "features section must be a JSON object"),
        ({"features": {"magnitude_edges": 5}}, r"magnitude_edges=5 must be a list"),
        (
            {"features": {"proposals": {"threshold": -5}}},
            "proposals.threshold must be positive and finite, got -5",
        ),
        (
            {"scoring": {"groups": ["velocity", "velocity"]}},
            "names a group more than once",
        ),
    ],
)
def test_feature_settings_checked_before_work(section, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(section)


def test_no_training_rows_named_before_pca():
    from mulde.pipeline import fit_models

    empty = empty_grid_clip()
    with pytest.raises(ValueError, match="Only 0 training rows .* 2 training clips"):
        fit_models({"01": empty, "02": empty}, RunConfig())


def test_frames_too_small_for_flow_name_the_clip(tmp_path):
    import cv2

    from mulde.features.cache import FeatureConfig, extract_dataset
    from mulde.video.clips import Clip, VideoDataset

    folder = tmp_path / "train" / "01"
    folder.mkdir(parents=True)
    for index in range(4):
        cv2.imwrite(str(folder / f"{index:03d}.png"), np.full((8, 8, 3), index * 40))
    clip = Clip(name="01", source=folder)
    dataset = VideoDataset("tiny", tmp_path, train=[clip], test=[])

    with pytest.raises(ValueError, match=r"train clip 01 .* 8 x 8 pixels are too"):
        extract_dataset(
            dataset, FeatureConfig(precision="float32"), tmp_path / "cache", False
        )


def test_corrupt_npz_labels_rejected(tmp_path):
    from mulde.video.labels import LabelError, load_pixel_mask_labels

    path = tmp_path / "labels.npz"
    path.write_bytes(b"PK\x03\x04garbage")

    with pytest.raises(LabelError, match=r"labels\.npz as an \.npz archive"):
        load_pixel_mask_labels(path)


def test_truncated_mat_labels_rejected(tmp_path):
    import scipy.io

    from mulde.video.labels import LabelError, load_mat_labels

    path = tmp_path / "1_label.mat"
    scipy.io.savemat(path, {"volLabel": np.zeros((1, 3), dtype=object)})
    path.write_bytes(path.read_bytes()[:150])

    with pytest.raises(LabelError, match=r"Cannot read MATLAB file .*1_label\.mat"):
        load_mat_labels(path)


def test_manifest_with_wrong_clip_entries_ignored(tmp_path):
    from mulde.features.cache import _read_manifest

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"clips": {"train": "oops", "test": {}}}))

    assert _read_manifest(path) is None


# ------------------------------------------- second breaker round, re-run as tests


def test_tiny_spread_features_still_scaled(X):
    detector = MULDE(**(TINY | {"epochs": 5})).fit(X * 1e-13)
    assert np.allclose(detector.scale_, X.std(axis=0) * 1e-13, rtol=1e-3)
    scores = detector.decision_function(np.vstack([X[:1], X[:1] * 1000]) * 1e-13)
    assert scores[1] > scores[0]


def test_constant_feature_keeps_unit_scale(X):
    X = X.copy()
    X[:, 1] = 7.0
    with pytest.warns(UserWarning, match="columns are constant"):
        detector = MULDE(**TINY).fit(X)
    assert detector.scale_[1] == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weighting": "gaussian", "sigma0": 50.0}, "is 0 at every sigma"),
        ({"weighting": "gaussian", "s": 1e-30}, "is 0 at every sigma"),
        ({"weighting": "sigma2", "sigma0": float("nan")}, "sigma0=nan must be"),
        ({"weighting": "sigma2", "s": float("inf")}, "s=inf must be"),
        ({"weighting": lambda sigma: -sigma}, "negative or non-finite"),
        ({"weighting": lambda sigma: sigma.sum()}, "one weight per sigma"),
    ],
)
def test_useless_weighting_rejected_before_training(X, options, message):
    with pytest.raises(ValueError, match=message):
        MULDE(**(TINY | options)).fit(X)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"flow_gap": 10**6}, "flow_gap"),
        ({"flow_gap": 10**21}, "flow_gap"),
        ({"window": 10**9}, "window"),
        ({"frame_scale": float("nan")}, "frame_scale"),
        ({"frame_scale": 1e-9}, "frame_scale"),
        ({"crop_context": float("nan")}, "crop_context"),
        ({"magnitude_edges": [float("nan")]}, "magnitude_edges"),
        ({"magnitude_edges": [1.0, float("inf")]}, "magnitude_edges"),
        ({"proposals": {"threshold": float("inf")}}, "threshold"),
    ],
)
def test_feature_settings_out_of_range_rejected(options, name):
    from mulde.features.cache import FeatureConfig

    with pytest.raises(ValueError, match=f"features.*{name}"):
        FeatureConfig(**options)


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([np.full((4, 4), np.nan)], "NaN or infinite"),
        ([np.zeros((0, 0))], "non-empty"),
        (["abc"], r"non-empty \(H, W\)"),
        ([np.zeros((4, 4)), np.zeros((5, 4))], "unlike the"),
    ],
)
def test_avenue_masks_checked(tmp_path, cells, message):
    import scipy.io

    from mulde.video.labels import LabelError, load_mat_labels

    volume = np.empty((1, len(cells)), dtype=object)
    for index, cell in enumerate(cells):
        volume[0, index] = cell
    path = tmp_path / "1_label.mat"
    scipy.io.savemat(path, {"volLabel": volume})
    with pytest.raises(LabelError, match=message):
        load_mat_labels(path)


def test_zero_frame_training_video_rejected(tmp_path):
    import cv2

    from mulde.video.datasets import load_dataset
    from mulde.video.readers import VideoReadError

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    for name, n_frames in (("train/01.avi", 5), ("train/02.avi", 0)):
        writer = cv2.VideoWriter(str(tmp_path / name), fourcc, 10, (32, 32))
        for _ in range(n_frames):
            writer.write(np.zeros((32, 32, 3), np.uint8))
        writer.release()
    (tmp_path / "test" / "01").mkdir()
    cv2.imwrite(str(tmp_path / "test" / "01" / "000.png"), np.zeros((32, 32), np.uint8))
    np.savez(tmp_path / "labels.npz", **{"01": np.zeros(1, np.int8)})
    with pytest.raises(VideoReadError, match=r"training video .*02\.avi"):
        load_dataset(
            "generic",
            tmp_path,
            train_dir="train",
            test_dir="test",
            labels="labels.npz",
        )


def test_ped1_on_ped2_folder_rejected():
    from conftest import PED2

    from mulde.video.datasets import load_dataset

    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    with pytest.raises(ValueError, match="looks like UCSD Ped2"):
        load_dataset("ped1", PED2)


def test_clip_name_with_dollars_plots(tmp_path):
    from mulde.report import plot_clips

    labels = {"a$b$c$": np.r_[np.zeros(5), np.ones(5)]}
    scores = {"a$b$c$": np.arange(10.0)}
    plot_clips(tmp_path / "clips.png", scores, scores, labels, {"a$b$c$": 1.0})
    assert (tmp_path / "clips.png").stat().st_size > 0


def test_text_file_named_npz_rejected(tmp_path):
    from mulde.video.labels import LabelError, load_labels_file

    path = tmp_path / "labels.npz"
    path.write_text("hello\n")
    with pytest.raises(LabelError, match=r"not a \.npz archive"):
        load_labels_file(path)


def test_record_array_labels_rejected(tmp_path):
    from mulde.video.labels import LabelError, load_labels_file

    path = tmp_path / "labels.npz"
    np.savez(path, a=np.zeros(4, dtype=[("x", "i4"), ("y", "f4")]))
    with pytest.raises(LabelError, match="record array"):
        load_labels_file(path)


def test_save_onto_folder_or_below_file_rejected(X, tmp_path):
    detector = MULDE(**TINY).fit(X)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        detector.save(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        detector.save(tmp_path / "a_file" / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_unpack_folder_rejected(tmp_path):
    from mulde.video.archive import unpack_archive

    with pytest.raises(ValueError, match="is a folder, not an archive"):
        unpack_archive(tmp_path, tmp_path / "dest", "ped2")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.__setitem__("mean", t["mean"][:3].clone()), "mean has shape"),
        (lambda t: t.__setitem__("scale", t["scale"] * 0), "scale has values <= 0"),
        (lambda t: t.__setitem__("levels", t["levels"][:3].clone()), "levels has"),
        (lambda t: t.pop("aggregator.gmm_means"), "damaged aggregator arrays"),
    ],
)
def test_edited_model_arrays_rejected(X, tmp_path, edit, message):
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    MULDE(**TINY).fit(X).save(good)
    with safe_open(str(good), framework="pt") as reader:
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
        metadata = reader.metadata()
    edit(tensors)
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata=metadata)
    with pytest.raises(ValueError, match=message):
        MULDE.load(edited)


def test_model_header_that_is_a_list_rejected(X, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    MULDE(**TINY).fit(X).save(good)
    with safe_open(str(good), framework="pt") as reader:
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={"mulde": "[1, 2]"})
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        MULDE.load(edited)


def test_unpack_below_a_file_rejected(tmp_path):
    import tarfile

    from mulde.video.archive import unpack_archive

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="Choose a writable --dest"):
        unpack_archive(archive, tmp_path / "a_file" / "dest", "ped2")


@pytest.mark.parametrize("name", ["open_size", "close_size", "dilate_size"])
def test_huge_morphology_kernel_rejected(name):
    from mulde.config import RunConfig

    with pytest.raises(ValueError, match=f"proposals.{name}=2001 is larger than"):
        RunConfig.from_dict({"features": {"proposals": {name: 2001}}}).validate()


def test_object_array_in_labels_npz_named(tmp_path):
    from mulde.video.labels import LabelError, load_clip_labels

    path = tmp_path / "labels.npz"
    np.savez(path, **{"01": np.array([0, 1, "x"], dtype=object)})
    with pytest.raises(LabelError, match=r"Cannot read array '01' of .*labels\.npz"):
        load_clip_labels(path, ["01"], [3])


def test_deeply_nested_config_named(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ValueError, match=r"deep\.json is not valid JSON"):
        RunConfig.from_file(path)
