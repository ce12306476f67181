"""Bad input to `mulde run` and `mulde score`, on small copies of real Ped2 clips."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import PED2, empty_grid_clip

from mulde import MULDE
from mulde.cli import main
from mulde.config import RunConfig

FAST = ["--epochs", "1", "--hidden-sizes", "16,16", "--batch-size", "256", "-q"]
GENERIC = ["--dataset", "generic", "--train-dir", "train", "--test-dir", "test"]
GENERIC += ["--labels", "labels.npz"]
N_FRAMES = 12


def _copy_frames(source: Path, target: Path, scale: float = 1.0) -> None:
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.jpg"))[:N_FRAMES]:
        if scale == 1.0:
            shutil.copy(path, target / path.name)
        else:
            image = cv2.imread(str(path))
            cv2.imwrite(
                str(target / path.name), cv2.resize(image, None, fx=scale, fy=scale)
            )


def _make_dataset(root: Path) -> Path:
    """Write a generic layout: training clips a and b, test clip c, 12 frames each."""
    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    _copy_frames(PED2 / "training" / "frames" / "01", root / "train" / "a")
    _copy_frames(PED2 / "training" / "frames" / "02", root / "train" / "b")
    _copy_frames(PED2 / "testing" / "frames" / "02", root / "test" / "c")
    labels = np.r_[np.zeros(6), np.ones(6)].astype(np.int8)
    np.savez(root / "labels.npz", c=labels)
    return root


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished run, started in its base folder with relative paths."""
    base = tmp_path_factory.mktemp("small")
    _make_dataset(base / "data")
    args = ["run", "--root", "data", "--out", "run", "--cache-dir", "cache"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        assert main(args + GENERIC + FAST) == 0
    return base


@pytest.fixture
def run_copy(small_run, tmp_path):
    """A copy of the finished run folder, free to damage."""
    run = tmp_path / "run"
    shutil.copytree(small_run / "run", run)
    return run


def _score(run: Path, clips: Path, out: Path, capsys, *extra: str):
    args = ["score", "--run", str(run), "--clips", str(clips), "--out", str(out)]
    code = main(args + list(extra) + ["--quiet"])
    return code, capsys.readouterr().err


# ------------------------------------------------------------- run folder


def test_publish_keeps_user_model_copies(tmp_path):
    from mulde.pipeline import _publish

    out, staging = tmp_path / "run", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    user_copies = ["detector_good_seed0.safetensors", "pca_good_seed0.safetensors"]
    for name in user_copies + [
        "detector-velocity.safetensors",
        "pca-motion.safetensors",
    ]:
        (out / name).write_text("earlier file")
    (staging / "detector.safetensors").write_text("this run")

    _publish(staging, out)

    assert (
        sorted(p.name for p in out.iterdir()) == ["detector.safetensors"] + user_copies
    )


def test_config_json_paths_absolute(small_run):
    saved = json.loads((small_run / "run" / "config.json").read_text())

    assert saved["dataset"]["root"] == str((small_run / "data").resolve())
    assert saved["cache_dir"] == str((small_run / "cache").resolve())


def test_run_records_train_frame_size(small_run):
    metrics = json.loads((small_run / "run" / "metrics.json").read_text())

    assert metrics["train_frame_size"] == {"height": 240, "width": 360}


def test_summary_line_shows_macro_zero():
    from mulde.pipeline import summary_line

    metrics = {"micro_auc": 0.25, "macro_auc": 0.0, "average_precision": 0.5}
    line = summary_line(metrics, 3.0, Path("runs/x"))

    assert "macro AUC 0.0000" in line
    assert "macro AUC n/a" in summary_line(metrics | {"macro_auc": None}, 3.0, "o")


# ------------------------------------------------------------- mulde run


def test_run_rejects_test_clips_of_other_size(tmp_path, capsys):
    root = _make_dataset(tmp_path / "data")
    shutil.rmtree(root / "test" / "c")
    _copy_frames(PED2 / "testing" / "frames" / "02", root / "test" / "c", 0.5)
    out = tmp_path / "run"
    args = ["run", "--root", str(root), "--out", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache")]

    assert main(args + GENERIC + FAST) == 2
    err = capsys.readouterr().err
    assert "Test clip c" in err
    assert "180x120" in err
    assert "360x240" in err
    assert "Resize the frames" in err
    assert not out.exists()
    assert not (tmp_path / "cache").exists()


def test_run_rejects_cache_inside_clip_folder(tmp_path, capsys):
    root = _make_dataset(tmp_path / "data")
    cache = root / "test" / "featcache"
    args = ["run", "--root", str(root), "--out", str(tmp_path / "run")]

    assert main(args + ["--cache-dir", str(cache)] + GENERIC + FAST) == 2
    err = capsys.readouterr().err
    assert "--cache-dir" in err
    assert "inside the clip folder" in err
    assert not cache.exists()


def test_run_names_nearly_black_frames(tmp_path, capsys):
    root = _make_dataset(tmp_path / "data")
    # 10-bit camera data in 16-bit PNGs: OpenCV reads values of 0 to 3.
    for frame in (root / "train").glob("*/*.jpg"):
        gray = cv2.imread(str(frame), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 4
        cv2.imwrite(str(frame.with_suffix(".png")), gray)
        frame.unlink()
    args = ["run", "--root", str(root), "--out", str(tmp_path / "run")]
    args += ["--cache-dir", str(tmp_path / "cache")]

    assert main(args + GENERIC + FAST) == 2
    err = capsys.readouterr().err
    assert "Only 0 training rows" in err
    assert "nearly black" in err
    assert "16-bit" in err


def test_too_few_rows_names_frames_below_grid_cell():
    from mulde.pipeline import FrameSummary, fit_models

    empty = empty_grid_clip()
    config = RunConfig()
    config.resolve_defaults()
    frames = {"01": FrameSummary(16, 24, 120.0)}

    with pytest.raises(ValueError, match=r"24x16 pixels, smaller than one grid cell"):
        fit_models({"01": empty}, config, frames)


# ------------------------------------------------------------ mulde score


def test_score_from_another_folder_uses_run_cache(
    small_run, tmp_path, capsys, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "s.csv"

    code, err = _score(small_run / "run", small_run / "data" / "test", out, capsys)

    assert code == 0, err
    assert out.is_file()
    assert list(elsewhere.iterdir()) == []
    assert (small_run / "cache" / "scored").is_dir()


@pytest.mark.parametrize("damage", [b"hello\n", "truncated"])
def test_score_damaged_pca_named(small_run, run_copy, tmp_path, capsys, damage):
    path = run_copy / "pca.safetensors"
    if damage == "truncated":
        damage = path.read_bytes()[:300]
    path.write_bytes(damage)

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert f"{path} is not a readable safetensors file" in err
    assert "mulde run" in err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "content",
    [b'{"seed": 0,\n', b"", '{"dataset": {"root": "d\xe9"}}'.encode("latin-1"), b"[]"],
    ids=["bad-json", "empty", "latin-1", "list"],
)
def test_score_unreadable_config_named(small_run, run_copy, tmp_path, capsys, content):
    path = run_copy / "config.json"
    path.write_bytes(content)

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert f"Configuration file {path}" in err


def test_score_missing_pca_named(small_run, run_copy, tmp_path, capsys):
    (run_copy / "pca.safetensors").unlink()
    clips = small_run / "data" / "test"

    code, err = _score(run_copy, clips, tmp_path / "s.csv", capsys)

    assert code == 2
    assert f"{run_copy / 'pca.safetensors'} not found" in err
    assert "incomplete" in err


@pytest.mark.parametrize(
    "edit",
    [
        {"features": {"mode": "frame"}, "scoring": {"groups": None}},
        {"scoring": {"groups": ["velocity", "appearance"]}},
        {"scoring": {"scoring": "per_group"}},
    ],
    ids=["mode-frame", "group-removed", "per-group"],
)
def test_score_edited_config_named(small_run, run_copy, tmp_path, capsys, edit):
    path = run_copy / "config.json"
    saved = json.loads(path.read_text())
    for section, values in edit.items():
        saved[section] |= values
    path.write_text(json.dumps(saved))

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert str(path) in err
    assert "edited after the run" in err


@pytest.mark.parametrize("edit", [{"grid_cell": 40}, {"flow_gap": 1}])
def test_score_edited_feature_setting_rejected(
    small_run, run_copy, tmp_path, capsys, edit
):
    # These edits keep every feature width, so only the recorded hash shows them.
    path = run_copy / "config.json"
    saved = json.loads(path.read_text())
    saved["features"] |= edit
    path.write_text(json.dumps(saved))

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert "differs from the settings the run extracted with" in err
    assert not (tmp_path / "s.csv").exists()


def test_score_uncreatable_cache_dir_named(small_run, run_copy, tmp_path, capsys):
    # A run folder copied from another machine names a cache folder that
    # cannot be created here: below a file.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    path = run_copy / "config.json"
    saved = json.loads(path.read_text())
    saved["cache_dir"] = str(blocker / "cache")
    path.write_text(json.dumps(saved))

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert f"Cannot write the feature cache folder {blocker / 'cache'}" in err
    assert "--cache-dir" in err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("height", [-240, 0])
def test_score_impossible_recorded_frame_size_named(
    small_run, run_copy, tmp_path, capsys, height
):
    path = run_copy / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["train_frame_size"]["height"] = height
    path.write_text(json.dumps(metrics))

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert f"{path} records a training frame size of {height} x" in err


def test_score_width_check_names_config(small_run):
    from mulde.score_video import check_model_inputs, load_run_models

    run = small_run / "run"
    config, models = load_run_models(run)
    groups = {
        "velocity": np.zeros((0, 2), np.float32),
        "appearance": np.zeros((0, 2560), np.float32),
        "geometry": np.zeros((0, 2), np.float32),
    }

    with pytest.raises(ValueError, match=r"expects 1280 columns.*config\.json"):
        check_model_inputs(models, groups, config, run)
    groups["appearance"] = np.zeros((0, 1280), np.float32)
    groups["geometry"] = np.zeros((0, 3), np.float32)
    with pytest.raises(ValueError, match=r"fitted on 68 features.*give 69"):
        check_model_inputs(models, groups, config, run)


def test_score_rejects_clips_of_other_size(small_run, tmp_path, capsys):
    clips = tmp_path / "new"
    _copy_frames(PED2 / "testing" / "frames" / "04", clips / "d", 0.5)

    code, err = _score(small_run / "run", clips, tmp_path / "s.csv", capsys)

    assert code == 2
    assert f"Clip d ({clips / 'd'})" in err
    assert "180x120" in err
    assert "360x240" in err
    assert "train a run on clips of this camera" in err
    assert not (tmp_path / "s.csv").exists()


def test_score_rejects_cache_inside_clips(small_run, tmp_path, capsys):
    clips = tmp_path / "new"
    shutil.copytree(small_run / "data" / "test", clips)
    cache = clips / "featcache"

    code, err = _score(
        small_run / "run", clips, tmp_path / "s.csv", capsys, "--cache-dir", str(cache)
    )

    assert code == 2
    assert "inside --clips" in err
    assert not cache.exists()


def test_score_cuda_run_falls_back_to_cpu(
    small_run, run_copy, tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = run_copy / "config.json"
    saved = json.loads(path.read_text())
    saved["detector"]["device"] = "cuda"
    path.write_text(json.dumps(saved))
    clips = small_run / "data" / "test"

    code, err = _score(run_copy, clips, tmp_path / "s.csv", capsys)

    assert code == 0, err
    assert "scoring on the CPU" in caplog.text
    assert "--device" in caplog.text


def test_score_unavailable_device_names_option(
    small_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clips = small_run / "data" / "test"

    code, err = _score(
        small_run / "run", clips, tmp_path / "s.csv", capsys, "--device", "cuda"
    )

    assert code == 2
    assert "--device cuda" in err
    assert "--device cpu" in err


def test_load_missing_cuda_not_damaged(small_run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = small_run / "run" / "detector.safetensors"

    with pytest.raises(ValueError, match="CUDA is not available") as raised:
        MULDE.load(path, device="cuda")
    assert "damaged" not in str(raised.value)


# -------------------------------------------------------------- options


@pytest.mark.parametrize("value", ["abc", "1.5", "0"])
def test_positive_int_option_message(capsys, value):
    with pytest.raises(SystemExit):
        main(["run", "--root", "x", "--out", "o", "--epochs", value, "--dry-run"])

    err = capsys.readouterr().err
    assert f"argument --epochs: {value!r} is not a positive integer" in err
    assert "_positive_int" not in err


def test_level_index_needs_level_aggregation(capsys):
    args = ["run", "--root", "x", "--out", "o", "--level-index", "3", "--dry-run"]

    assert main(args) == 2
    assert "--aggregation level" in capsys.readouterr().err
    assert main(args + ["--aggregation", "level"]) == 0


def test_score_accepts_short_quiet(tmp_path, capsys):
    args = ["score", "--run", str(tmp_path), "--clips", str(tmp_path)]

    assert main(args + ["--out", str(tmp_path / "s.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert "config.json not found" in err


def test_study_help_states_defaults_once(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])

    printed = capsys.readouterr().out
    assert "(default: None)" not in printed
    assert "(default: False)" not in printed
    assert "(default 3; 1 with --quick)" in printed


def test_score_out_folder_rejected_before_work(small_run, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    code, err = _score(small_run / "run", small_run / "data" / "test", folder, capsys)
    assert code == 2
    assert "it is a folder; give the path of a file, such as" in err
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["metrics.json", "detector.safetensors", "scores.csv", "report.html"]
)
def test_score_out_never_overwrites_run_files(
    small_run, run_copy, tmp_path, capsys, name
):
    before = (run_copy / name).read_bytes()

    code, err = _score(run_copy, small_run / "data" / "test", run_copy / name, capsys)

    assert code == 2
    assert f"would overwrite {name} of the run folder" in err
    assert (run_copy / name).read_bytes() == before


def test_score_out_with_trailing_slash_is_a_folder(small_run, tmp_path, capsys):
    out = f"{tmp_path / 'newdir'}/"
    code, err = _score(small_run / "run", small_run / "data" / "test", out, capsys)
    assert code == 2
    assert "it is a folder; give the path of a file, such as" in err
    assert not (tmp_path / "newdir").exists()


def test_score_out_below_a_file_named(small_run, tmp_path, capsys):
    blocker = tmp_path / "labels.npz"
    blocker.write_text("a file")
    out = blocker / "x.csv"
    code, err = _score(small_run / "run", small_run / "data" / "test", out, capsys)
    assert code == 2
    assert f"{blocker} is a file, not a folder" in err


def test_score_without_labels_removes_stale_metrics(small_run, tmp_path, capsys):
    clips = small_run / "data" / "test"
    out = tmp_path / "new.csv"
    stale = tmp_path / "new.metrics.json"
    stale.write_text('{"micro_auc": 0.5}')

    code, err = _score(small_run / "run", clips, out, capsys)

    assert code == 0, err
    assert out.is_file()
    assert not stale.exists()


@pytest.mark.parametrize("option", ["--run", "--clips"])
def test_score_file_given_for_folder_named(small_run, tmp_path, capsys, option):
    run, clips = small_run / "run", small_run / "data" / "test"
    if option == "--run":
        run = run / "config.json"
    else:
        clips = next(clips.glob("*/*.jpg"))
    code, err = _score(run, clips, tmp_path / "s.csv", capsys)
    assert code == 2
    assert f"{option} " in err
    assert "is a file; pass a folder" in err


def test_score_single_clip_folder_suggests_parent(small_run, tmp_path, capsys):
    clip = next((small_run / "data" / "test").iterdir())
    code, err = _score(small_run / "run", clip, tmp_path / "s.csv", capsys)
    assert code == 2
    assert "contains frame images itself, so it is one clip" in err


@pytest.mark.parametrize("damage", ["missing", "not json", "list"])
def test_score_needs_the_run_metrics(small_run, run_copy, tmp_path, capsys, damage):
    path = run_copy / "metrics.json"
    if damage == "missing":
        path.unlink()
    else:
        path.write_text("{broken" if damage == "not json" else "[]")

    code, err = _score(
        run_copy, small_run / "data" / "test", tmp_path / "s.csv", capsys
    )

    assert code == 2
    assert str(path) in err
    assert not (tmp_path / "s.csv").exists()
