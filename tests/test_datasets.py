"""Tests for mulde.video.datasets on the real Ped2 copy and small built layouts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import PED2

from mulde.video.datasets import DATASETS, discover_clips, load_dataset
from mulde.video.labels import LabelError
from mulde.video.readers import VideoReadError

PED2_TEST_LENGTHS = [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
needs_ped2 = pytest.mark.skipif(
    not PED2.is_dir(), reason=f"Ped2 data not found at {PED2}"
)


def write_frames(folder: Path, n_frames: int, suffix: str = ".tif", start: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_frames):
        image = np.full((12, 16), 10 * index, dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"{start + index:03d}{suffix}"), image)


def write_masks(folder: Path, labels: list[int]):
    folder.mkdir(parents=True, exist_ok=True)
    for index, label in enumerate(labels, start=1):
        mask = np.zeros((12, 16), dtype=np.uint8)
        mask[3, 4] = 255 * label
        assert cv2.imwrite(str(folder / f"{index:03d}.bmp"), mask)


def write_video(path: Path, n_frames: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 12))
    assert writer.isOpened()
    for index in range(n_frames):
        writer.write(np.full((12, 16, 3), 10 * index, dtype=np.uint8))
    writer.release()


def build_ucsd_original(parent: Path, m_lines: list[str] | None) -> Path:
    """Build UCSDped2 with 2 train clips and test clips of 4 and 3 frames."""
    base = parent / "UCSDped2"
    write_frames(base / "Train" / "Train001", 3)
    write_frames(base / "Train" / "Train002", 2)
    write_frames(base / "Test" / "Test001", 4)
    write_frames(base / "Test" / "Test002", 3)
    write_masks(base / "Test" / "Test001_gt", [0, 1, 1, 0])
    write_masks(base / "Test" / "Test002_gt", [1, 0, 0])
    (base / "Test" / ".DS_Store").write_bytes(b"")
    if m_lines is not None:
        (base / "Test" / "UCSDped2.m").write_text("\n".join(m_lines) + "\n")
    return base


def build_frames_layout(root: Path, test_lengths: list[int]) -> Path:
    write_frames(root / "training" / "frames" / "01", 3, ".jpg", start=0)
    for index, length in enumerate(test_lengths, start=1):
        write_frames(root / "testing" / "frames" / f"{index:02d}", length, ".jpg", 0)
    return root


@needs_ped2
def test_ped2_frames_layout_clips_and_lengths():
    dataset = load_dataset("ped2", PED2)

    assert dataset.name == "ped2"
    assert len(dataset.train) == 16
    assert len(dataset.test) == 12
    assert [clip.name for clip in dataset.test] == [f"{i:02d}" for i in range(1, 13)]
    assert [len(clip.labels) for clip in dataset.test] == PED2_TEST_LENGTHS
    assert all(clip.labels is None for clip in dataset.train)


@needs_ped2
def test_ped2_frames_layout_labels_from_m_file():
    dataset = load_dataset("PED2", PED2)

    assert sum(int(clip.labels.sum()) for clip in dataset.test) == 1648
    assert all(clip.labels.dtype == np.int8 for clip in dataset.test)
    assert dataset.test[0].labels[60:].all()
    assert not dataset.test[0].labels[:60].any()


@needs_ped2
def test_ped2_labels_override_with_pixel_masks():
    from_m = load_dataset("ped2", PED2)
    from_masks = load_dataset("ped2", PED2, labels=PED2 / "pixel_masks.npz")

    for clip_m, clip_masks in zip(from_m.test, from_masks.test, strict=True):
        assert np.array_equal(clip_m.labels, clip_masks.labels), clip_m.name


def test_ucsd_original_layout_both_roots(tmp_path):
    base = build_ucsd_original(
        tmp_path,
        [
            "TestVideoFile = {};",
            "TestVideoFile{end+1}.gt_frame = [2:3];",
            "TestVideoFile{end+1}.gt_frame = [1:1];",
        ],
    )

    from_parent = load_dataset("ped2", tmp_path)
    from_base = load_dataset("ped2", base)

    assert from_parent.root == base
    assert from_base.root == base
    assert [clip.name for clip in from_parent.train] == ["Train001", "Train002"]
    assert [clip.name for clip in from_parent.test] == ["Test001", "Test002"]
    assert [clip.labels.tolist() for clip in from_parent.test] == [
        [0, 1, 1, 0],
        [1, 0, 0],
    ]
    assert [clip.name for clip in from_base.test] == ["Test001", "Test002"]


def test_ucsd_labels_from_gt_folders(tmp_path):
    build_ucsd_original(tmp_path, m_lines=None)

    dataset = load_dataset("ped2", tmp_path)

    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 1, 1, 0], [1, 0, 0]]


def test_frames_layout_labels_from_npy(tmp_path):
    root = build_frames_layout(tmp_path, [3, 2])
    np.save(root / "frame_labels_ped2.npy", np.array([[0, 0, 1, 1, 1]]))

    dataset = load_dataset("ped2", root)

    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 0, 1], [1, 1]]


def test_frames_layout_labels_from_pixel_masks(tmp_path):
    root = build_frames_layout(tmp_path, [2, 1])
    first = np.zeros((2, 4, 4), dtype=bool)
    first[1, 2, 2] = True
    np.savez(
        root / "pixel_masks.npz", Test001_gt=first, Test002_gt=np.ones((1, 4, 4), bool)
    )

    dataset = load_dataset("ped1", root)

    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 1], [1]]


def test_npy_total_mismatch_raises(tmp_path):
    root = build_frames_layout(tmp_path, [3, 2])
    np.save(root / "frame_labels_ped2.npy", np.zeros(6, dtype=np.int64))

    with pytest.raises(LabelError, match=r"frame_labels_ped2\.npy has 6 .* have 5"):
        load_dataset("ped2", root)


def test_clip_length_mismatch_raises(tmp_path):
    root = build_frames_layout(tmp_path, [3, 2])
    np.savez(root / "wrong.npz", **{"01": np.zeros(3), "02": np.zeros(4)})

    with pytest.raises(
        LabelError, match=r"test clip '02' from .*wrong\.npz have 4 frames but .* 2"
    ):
        load_dataset("ped2", root, labels="wrong.npz")


def test_missing_root_raises_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*UCSDped2/Train"):
        load_dataset("ped2", tmp_path / "nowhere")


def test_missing_layout_names_expected_folders(tmp_path):
    (tmp_path / "training").mkdir()

    with pytest.raises(FileNotFoundError, match=r"No avenue dataset .*training_videos"):
        load_dataset("avenue", tmp_path)


def test_missing_labels_lists_searched_paths(tmp_path):
    root = build_frames_layout(tmp_path, [2])

    with pytest.raises(FileNotFoundError, match=r"UCSDped2\.m.*labels=PATH"):
        load_dataset("ped2", root)


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="Known datasets: ped1, ped2, avenue"):
        load_dataset("ucf_crime", tmp_path)
    assert DATASETS == ("ped1", "ped2", "avenue", "shanghaitech", "generic")


def test_empty_test_clip_names_folder(tmp_path):
    root = build_frames_layout(tmp_path, [2])
    (root / "testing" / "frames" / "02").mkdir()
    np.save(root / "frame_labels_ped2.npy", np.zeros(2))

    with pytest.raises(VideoReadError, match=r"No frame images in .*frames/02"):
        load_dataset("ped2", root)


def test_avenue_videos_with_mat_labels(tmp_path):
    write_video(tmp_path / "training_videos" / "01.avi", 4)
    write_video(tmp_path / "testing_videos" / "01.avi", 3)
    write_video(tmp_path / "testing_videos" / "02.avi", 2)
    mask_folder = tmp_path / "ground_truth_demo" / "testing_label_mask"
    mask_folder.mkdir(parents=True)
    for clip, labels in (("1", [0, 1, 0]), ("2", [1, 1])):
        cells = np.empty((1, len(labels)), dtype=object)
        for index, label in enumerate(labels):
            cells[0, index] = np.full((12, 16), label, dtype=np.uint8)
        scipy.io.savemat(mask_folder / f"{clip}_label.mat", {"volLabel": cells})

    dataset = load_dataset("avenue", tmp_path)

    assert [clip.name for clip in dataset.train] == ["01"]
    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 1, 0], [1, 1]]


def test_avenue_frames_layout(tmp_path):
    base = tmp_path / "Avenue Dataset"
    write_frames(base / "training_frames" / "01", 2, ".jpg", 0)
    write_frames(base / "testing_frames" / "01", 3, ".jpg", 0)
    np.save(base / "frame_labels_avenue.npy", np.array([0, 0, 1]))

    dataset = load_dataset("avenue", tmp_path)

    assert dataset.root == base
    assert dataset.test[0].labels.tolist() == [0, 0, 1]


def test_shanghaitech_layout(tmp_path):
    write_video(tmp_path / "training" / "videos" / "01_001.avi", 3)
    write_frames(tmp_path / "testing" / "frames" / "01_0014", 3, ".jpg", 0)
    write_frames(tmp_path / "testing" / "frames" / "01_0015", 2, ".jpg", 0)
    masks = tmp_path / "testing" / "test_frame_mask"
    masks.mkdir()
    np.save(masks / "01_0014.npy", np.array([0, 1, 1]))
    np.save(masks / "01_0015.npy", np.array([0, 0]))

    dataset = load_dataset("shanghaitech", tmp_path)

    assert [clip.name for clip in dataset.train] == ["01_001"]
    assert [clip.name for clip in dataset.test] == ["01_0014", "01_0015"]
    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 1, 1], [0, 0]]


def test_generic_mixed_clips_with_csv_labels(tmp_path):
    write_video(tmp_path / "train" / "cam1.avi", 3)
    write_frames(tmp_path / "train" / "cam2", 2, ".png")
    write_video(tmp_path / "test" / "night.avi", 2)
    write_frames(tmp_path / "test" / "day", 3, ".png")
    (tmp_path / "labels.csv").write_text(
        "clip,frame,label\nday,0,0\nday,1,1\nday,2,0\nnight,0,1\nnight,1,1\n"
    )

    dataset = load_dataset(
        "generic", tmp_path, train_dir="train", test_dir="test", labels="labels.csv"
    )

    assert [clip.name for clip in dataset.train] == ["cam1", "cam2"]
    assert [clip.name for clip in dataset.test] == ["day", "night"]
    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 1, 0], [1, 1]]


def test_generic_requires_labels(tmp_path):
    with pytest.raises(
        ValueError, match=r"generic dataset requires --labels \(labels\)"
    ):
        load_dataset("generic", tmp_path, train_dir="train", test_dir="test")


def test_discover_clips_rejects_duplicate_names(tmp_path):
    write_frames(tmp_path / "01", 1)
    write_video(tmp_path / "01.avi", 2)

    with pytest.raises(VideoReadError, match="Two clips in .* are named '01'"):
        discover_clips(tmp_path)
