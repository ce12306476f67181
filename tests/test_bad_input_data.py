"""Bad input data and configuration files: each is rejected clearly or handled.

The clips are small copies of real UCSD Ped2 frames.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PED2

from mulde.cli import main
from mulde.config import RunConfig
from mulde.features import FeatureConfig
from mulde.features import cache as feature_cache
from mulde.features.cache import cache_folder, extract_dataset
from mulde.video.archive import unpack_archive
from mulde.video.clips import Clip, VideoDataset
from mulde.video.readers import (
    VideoReadError,
    iter_frames,
    list_frame_files,
    natural_sort_key,
    read_image,
)

TRAIN_CLIP = PED2 / "training" / "frames" / "01"
TEST_CLIP = PED2 / "testing" / "frames" / "02"
UCSD_TOP = "UCSD_Anomaly_Dataset.v1p2"

needs_ped2 = pytest.mark.skipif(
    not TRAIN_CLIP.is_dir(), reason=f"UCSD Ped2 frames not found at {TRAIN_CLIP}"
)


def copy_frames(source: Path, target: Path, count: int, names=None) -> Path:
    """Copy the first ``count`` frames of ``source`` into ``target``.

    ``names`` maps the frame index to the new file name; the default keeps the
    original names (``000.jpg``, ...).
    """
    target.mkdir(parents=True)
    for index, path in enumerate(sorted(source.glob("*.jpg"))[:count]):
        name = path.name if names is None else names(index)
        shutil.copy2(path, target / name)
    return target


def swap_files(first: Path, second: Path) -> None:
    """Swap two files by renaming them, as ``mv`` does."""
    temporary = first.with_name("swap.tmp")
    first.rename(temporary)
    second.rename(first)
    temporary.rename(second)


@pytest.fixture
def small_dataset(tmp_path) -> VideoDataset:
    """One training clip of 5 frames and one test clip of 6 frames."""
    if not TRAIN_CLIP.is_dir():
        pytest.skip(f"UCSD Ped2 frames not found at {TRAIN_CLIP}")
    frames = tmp_path / "frames"
    train = [Clip("01", copy_frames(TRAIN_CLIP, frames / "train01", 5))]
    test = [Clip("02", copy_frames(TEST_CLIP, frames / "test02", 6))]
    return VideoDataset("ped2-small", frames, train=train, test=test)


# Renamed and swapped frames invalidate the feature cache.


@needs_ped2
def test_signature_changes_on_frame_swap(tmp_path):
    clip = copy_frames(TEST_CLIP, tmp_path / "clip", 6)
    before = feature_cache._source_signature(clip)

    swap_files(clip / "000.jpg", clip / "005.jpg")
    after = feature_cache._source_signature(clip)

    assert after["n_files"] == before["n_files"]
    assert after["size"] == before["size"]
    assert after["mtime_ns"] == before["mtime_ns"]
    assert after != before


@needs_ped2
def test_signature_changes_on_frame_rename(tmp_path):
    clip = copy_frames(TEST_CLIP, tmp_path / "clip", 6)
    before = feature_cache._source_signature(clip)

    (clip / "005.jpg").rename(clip / "006.jpg")

    assert feature_cache._source_signature(clip) != before


@needs_ped2
def test_signature_stable_without_changes(tmp_path):
    clip = copy_frames(TEST_CLIP, tmp_path / "clip", 6)

    first = feature_cache._source_signature(clip)
    second = feature_cache._source_signature(clip)

    assert first == second


def test_extract_dataset_reextracts_swapped_frames(
    tmp_path, small_dataset, extraction_counter
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    clip = small_dataset.test[0].source
    swap_files(clip / "000.jpg", clip / "005.jpg")

    rerun = extract_dataset(small_dataset, config, cache_dir, verbose=False)
    fresh = extract_dataset(small_dataset, config, tmp_path / "fresh", verbose=False)

    assert extraction_counter == ["01", "02", "02", "01", "02"]
    rerun_clip, fresh_clip = rerun["test"]["02"], fresh["test"]["02"]
    np.testing.assert_array_equal(rerun_clip.frame_index, fresh_clip.frame_index)
    np.testing.assert_array_equal(rerun_clip.features(), fresh_clip.features())


def test_cache_entry_without_file_digest_is_reused(
    tmp_path, small_dataset, extraction_counter
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    manifest_path = cache_folder(cache_dir, config) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entries in manifest["clips"].values():
        for entry in entries.values():
            del entry["files_sha256"]
    manifest_path.write_text(json.dumps(manifest))

    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    upgraded = json.loads(manifest_path.read_text())

    assert extraction_counter == ["01", "02"]
    for split in ("train", "test"):
        for entry in upgraded["clips"][split].values():
            assert len(entry["files_sha256"]) == 64


# Frame files sort by the number in their names.


@needs_ped2
def test_unnumbered_image_beside_frames_rejected(tmp_path):
    clip = copy_frames(
        TEST_CLIP, tmp_path / "clip", 12, names=lambda index: f"frame{index + 1}.jpg"
    )
    shutil.copy(clip / "frame1.jpg", clip / "cover.jpg")

    with pytest.raises(VideoReadError) as caught:
        list_frame_files(clip)

    message = str(caught.value)
    assert str(clip) in message
    assert "cover.jpg" in message
    assert "move them out of the clip folder" in message


@needs_ped2
def test_prefixed_frames_read_in_number_order(tmp_path):
    clip = copy_frames(
        TEST_CLIP, tmp_path / "clip", 12, names=lambda index: f"frame{index + 1}.jpg"
    )
    originals = sorted(TEST_CLIP.glob("*.jpg"))[:12]

    names = [path.name for path in list_frame_files(clip)]
    frames = list(iter_frames(clip))

    assert names == [f"frame{number}.jpg" for number in range(1, 13)]
    np.testing.assert_array_equal(frames[9], read_image(originals[9]))


@needs_ped2
def test_name_order_fallback_warns(tmp_path, caplog):
    names = ["a9.jpg", "a10.jpg", "b1.jpg"]
    clip = copy_frames(TEST_CLIP, tmp_path / "clip", 3, names=names.__getitem__)

    with caplog.at_level(logging.WARNING, logger="mulde.video.readers"):
        listed = [path.name for path in list_frame_files(clip)]
        list_frame_files(clip)

    assert listed == ["a10.jpg", "a9.jpg", "b1.jpg"]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert str(clip) in warnings[0]
    assert "a10.jpg before a9.jpg" in warnings[0]


@needs_ped2
def test_zero_padded_mixed_prefixes_no_warning(tmp_path, caplog):
    names = ["cam1_0009.jpg", "cam1_0010.jpg", "cam2_0001.jpg"]
    clip = copy_frames(TEST_CLIP, tmp_path / "clip", 3, names=names.__getitem__)

    with caplog.at_level(logging.WARNING, logger="mulde.video.readers"):
        listed = [path.name for path in list_frame_files(clip)]

    assert listed == names
    assert caplog.records == []


@needs_ped2
def test_run_rejects_clip_with_cover_image(tmp_path, capsys):
    root = tmp_path / "data"
    copy_frames(TRAIN_CLIP, root / "train" / "a", 8)
    clip = copy_frames(
        TEST_CLIP, root / "test" / "b", 8, names=lambda index: f"frame{index + 1}.jpg"
    )
    shutil.copy(clip / "frame1.jpg", clip / "cover.jpg")
    np.savez(root / "labels.npz", b=np.r_[np.zeros(5), np.ones(4)].astype(np.int8))
    args = ["run", "--dataset", "generic", "--root", str(root)]
    args += ["--train-dir", "train", "--test-dir", "test", "--labels", "labels.npz"]
    args += ["--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]

    code = main(args + ["--epochs", "1", "--hidden-sizes", "16,16", "-q"])

    err = capsys.readouterr().err
    assert code == 2
    assert "cover.jpg" in err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "cache").exists()


# Configuration values that the dry run must reject, and a byte order mark.


def test_config_rejects_unknown_dataset_name():
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict({"dataset": {"name": "ucf"}})

    message = str(caught.value)
    assert "'ucf'" in message
    assert "ped2" in message
    assert "generic" in message


def test_config_rejects_unknown_backbone():
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict({"features": {"backbone": "resnet9000"}})

    message = str(caught.value)
    assert "'resnet9000'" in message
    assert "efficientnet_lite0" in message
    assert "torchvision:<model_name>" in message


def test_feature_config_backbone_names():
    config = FeatureConfig(backbone="torchvision:resnet50")

    assert config.backbone == "torchvision:resnet50"
    with pytest.raises(ValueError, match="'torchvision:'"):
        FeatureConfig(backbone="torchvision:")


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"dataset": {"name": "ucf"}}, "'ucf'"),
        ({"features": {"backbone": "resnet9000"}}, "'resnet9000'"),
    ],
)
def test_dry_run_rejects_unknown_names(tmp_path, capsys, section, named):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(section))

    code = main(
        ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--dry-run"]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert named in err
    assert not (tmp_path / "run").exists()


def test_config_file_with_byte_order_mark(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_bytes(b'\xef\xbb\xbf{"seed": 1}')

    loaded = RunConfig.from_file(config)
    code = main(
        ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--dry-run"]
    )

    assert loaded.seed == 1
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["seed"] == 1


# Archives: the format comes from the content, and a wrong archive writes nothing.


def ucsd_members() -> dict[str, bytes]:
    """Return a tiny UCSDped2 copy of real Ped2 frames in the archive layout."""
    frames = sorted(TRAIN_CLIP.glob("*.jpg"))[:3]
    base = f"{UCSD_TOP}/UCSDped2"
    members = {}
    for clip in ("Train/Train001", "Test/Test001"):
        for index, path in enumerate(frames, start=1):
            members[f"{base}/{clip}/{index:03d}.jpg"] = path.read_bytes()
    members[f"{base}/UCSDped2.m"] = (PED2 / "UCSDped2.m").read_bytes()
    return members


def write_archive(path: Path, archive_format: str, members: dict[str, bytes]) -> Path:
    if archive_format == "zip":
        with zipfile.ZipFile(path, "w") as zip_file:
            for name, data in members.items():
                zip_file.writestr(name, data)
        return path
    mode = "w:gz" if archive_format == "tar.gz" else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def partial_folders(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if ".partial-" in path.name)


@needs_ped2
@pytest.mark.parametrize(
    ("archive_format", "name"),
    [
        ("zip", "UCSD_Anomaly_Dataset.tar.gz"),
        ("tar.gz", "UCSD_Anomaly_Dataset.zip"),
        ("tar", "UCSD_Anomaly_Dataset.tgz"),
        ("zip", "UCSD_Anomaly_Dataset.download"),
    ],
)
def test_unpack_detects_format_by_content(tmp_path, archive_format, name):
    archive = write_archive(tmp_path / name, archive_format, ucsd_members())
    dest = tmp_path / "data"

    root = unpack_archive(archive, dest, "ped2")

    assert root == dest / UCSD_TOP / "UCSDped2"
    assert len(list_frame_files(root / "Train" / "Train001")) == 3
    assert partial_folders(tmp_path) == []


def test_unpack_damaged_zip_named_tar_reports_zip(tmp_path):
    archive = write_archive(tmp_path / "data.zip", "zip", {"a.txt": b"x" * 1000})
    data = bytearray(archive.read_bytes())
    start = data.find(b"x" * 100)
    data[start : start + 10] = b"y" * 10
    named_tar = tmp_path / "data.tar.gz"
    named_tar.write_bytes(bytes(data))

    with pytest.raises(ValueError, match=r"Cannot read zip archive .*data\.tar\.gz"):
        unpack_archive(named_tar, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("dest_exists", [False, True])
def test_unpack_wrong_archive_leaves_dest_unchanged(tmp_path, dest_exists):
    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    members = {"stuff/labels.npz": (PED2 / "frame_labels_ped2.npy").read_bytes()}
    archive = write_archive(tmp_path / "other.tar.gz", "tar.gz", members)
    dest = tmp_path / "data"
    if dest_exists:
        dest.mkdir()
        (dest / "keep.txt").write_text("user file\n")

    with pytest.raises(ValueError) as caught:
        unpack_archive(archive, dest, "ped2")

    message = str(caught.value)
    assert "found no ped2 dataset folder" in message
    assert "other.tar.gz" in message
    assert "Nothing was unpacked" in message
    if dest_exists:
        assert sorted(path.name for path in dest.iterdir()) == ["keep.txt"]
    else:
        assert not dest.exists()
    assert partial_folders(tmp_path) == []


def test_superscript_digit_in_name_sorts_as_text():
    # "²" counts as a digit for str.isdigit but int() rejects it.
    names = ["b1²2.jpg", "a10.jpg", "a2.jpg"]
    assert sorted(names, key=natural_sort_key) == ["a2.jpg", "a10.jpg", "b1²2.jpg"]


@pytest.mark.parametrize("value", [5, None, "../train/01.npz", "train/01.npz"])
def test_manifest_file_edited_reextracts(
    tmp_path, small_dataset, extraction_counter, value
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    first = extract_dataset(small_dataset, config, cache_dir, verbose=False)
    manifest_path = cache_folder(cache_dir, config) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    (entry,) = manifest["clips"]["test"].values()
    entry["file"] = value
    manifest_path.write_text(json.dumps(manifest))

    rerun = extract_dataset(small_dataset, config, cache_dir, verbose=False)

    assert extraction_counter == ["01", "02", "02"]
    np.testing.assert_array_equal(
        rerun["test"]["02"].features(), first["test"]["02"].features()
    )


# Clips of one name from different sources share a cache folder.


def _other_dataset(tmp_path, name="02") -> VideoDataset:
    """A dataset whose test clip has the name of small_dataset's, other frames."""
    frames = tmp_path / "other"
    train = [Clip("01", copy_frames(TRAIN_CLIP, frames / "train01", 5))]
    test = [Clip(name, copy_frames(TRAIN_CLIP, frames / "test02", 7))]
    return VideoDataset("other", frames, train=train, test=test)


def test_same_clip_name_two_sources(tmp_path, small_dataset, extraction_counter):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    other = _other_dataset(tmp_path)
    first = extract_dataset(small_dataset, config, cache_dir, verbose=False, lazy=True)
    second = extract_dataset(other, config, cache_dir, verbose=False, lazy=True)

    # Alternating between the two datasets extracts nothing again.
    again = extract_dataset(small_dataset, config, cache_dir, verbose=False, lazy=True)
    assert extraction_counter == ["01", "02", "01", "02"]
    assert first["test"].frame_counts() == {"02": 6}
    assert second["test"].frame_counts() == {"02": 7}
    assert again["test"]["02"].n_frames == 6
    assert second["test"]["02"].n_frames == 7
    manifest = json.loads(
        (cache_folder(cache_dir, config) / "manifest.json").read_text()
    )
    entries = manifest["clips"]["test"]
    assert sorted(entry["clip"] for entry in entries.values()) == ["02", "02"]
    assert len({entry["file"] for entry in entries.values()}) == 2


def test_manifest_write_keeps_entries_of_another_process(
    tmp_path, small_dataset, extraction_counter
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    manifest_path = cache_folder(cache_dir, config) / "manifest.json"
    theirs = json.loads(manifest_path.read_text())
    # Another run read the manifest before the first run wrote it: its in-memory
    # copy has no clips, and it writes after the first run.
    folder = cache_folder(cache_dir, config)
    stale = dict(theirs, clips={"train": {}, "test": {}})
    feature_cache._merge_manifest(manifest_path, stale, "test", {})

    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    assert extraction_counter == ["01", "02"]
    assert (
        json.loads((folder / "manifest.json").read_text())["clips"] == (theirs["clips"])
    )


@pytest.mark.parametrize("target", ["manifest", "feature file"])
def test_cache_entry_replaced_by_a_folder_is_named(tmp_path, small_dataset, target):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    folder = cache_folder(cache_dir, config)
    manifest = json.loads((folder / "manifest.json").read_text())
    (entry,) = manifest["clips"]["test"].values()
    path = folder / ("manifest.json" if target == "manifest" else entry["file"])
    path.unlink()
    path.mkdir()

    with pytest.raises(IsADirectoryError, match=f"{target} .*it is a folder"):
        extract_dataset(small_dataset, config, cache_dir, verbose=False)


@pytest.mark.parametrize("new_entries_too", [False, True])
def test_old_cache_layout_renamed(
    tmp_path, small_dataset, extraction_counter, caplog, new_entries_too
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    first = extract_dataset(small_dataset, config, cache_dir, verbose=False)
    folder = cache_folder(cache_dir, config)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # Rewrite the cache as the previous layout stored it: split/<clip>.npz,
    # keyed by the clip name alone.
    for split, entries in manifest["clips"].items():
        for key, entry in list(entries.items()):
            name = entry["clip"]
            old_file = f"{split}/{name}.npz"
            old_entry = {k: v for k, v in entry.items() if k != "clip"}
            old_entry["file"] = old_file
            entries[name] = old_entry
            if new_entries_too:
                # A version between the two layouts extracted the clip again.
                shutil.copy(folder / entry["file"], folder / old_file)
                continue
            (folder / entry["file"]).rename(folder / old_file)
            del entries[key]
    manifest_path.write_text(json.dumps(manifest))

    with caplog.at_level(logging.INFO, logger="mulde"):
        again = extract_dataset(small_dataset, config, cache_dir, verbose=False)

    assert extraction_counter == ["01", "02"]
    assert "moved the cached files of 1 clips" in caplog.text
    np.testing.assert_array_equal(
        again["test"]["02"].features(), first["test"]["02"].features()
    )
    renamed = json.loads(manifest_path.read_text())
    for split in ("train", "test"):
        (entry,) = renamed["clips"][split].values()
        assert (folder / entry["file"]).is_file()
    assert sorted(p.name.split("-")[0] for p in folder.glob("*/*.npz")) == [
        "01",
        "02",
    ]


def test_cache_files_get_the_default_mode(tmp_path, small_dataset):
    import os
    import stat

    config = FeatureConfig(batch_size=16)
    extract_dataset(small_dataset, config, tmp_path / "cache", verbose=False)
    mask = os.umask(0)
    os.umask(mask)
    folder = cache_folder(tmp_path / "cache", config)
    for path in [folder / "manifest.json", *folder.glob("*/*.npz")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
