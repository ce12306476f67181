"""Tests for the ground-truth parsers in mulde.video.labels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import PED2

from mulde.video.labels import (
    LabelError,
    labels_from_masks,
    load_clip_labels,
    load_frame_mask_folder,
    load_labels_file,
    load_mask_folder_labels,
    load_mat_labels,
    load_npy_labels,
    load_pixel_mask_labels,
    load_pixel_masks_npz,
    match_clip_labels,
    normalize_clip_key,
    parse_ucsd_m,
)

PED2_TEST_LENGTHS = [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
needs_ped2 = pytest.mark.skipif(
    not PED2.is_dir(), reason=f"Ped2 data not found at {PED2}"
)


def write_m_file(path: Path, lines: list[str]) -> Path:
    path.write_text("TestVideoFile = {};\n" + "\n".join(lines) + "\n")
    return path


@needs_ped2
def test_ped2_m_file_total_anomalous_frames():
    labels = parse_ucsd_m(PED2 / "UCSDped2.m", PED2_TEST_LENGTHS)

    assert [clip.shape for clip in labels] == [(n,) for n in PED2_TEST_LENGTHS]
    assert all(clip.dtype == np.int8 for clip in labels)
    assert sum(int(clip.sum()) for clip in labels) == 1648
    # First line of the file is [61:180]: frames 1..60 normal, 61..180 anomalous.
    assert labels[0][:60].sum() == 0
    assert labels[0][60:].all()


@needs_ped2
def test_ped2_m_file_agrees_with_npy():
    from_m = parse_ucsd_m(PED2 / "UCSDped2.m", PED2_TEST_LENGTHS)
    from_npy = load_npy_labels(PED2 / "frame_labels_ped2.npy", PED2_TEST_LENGTHS)

    assert len(from_npy) == 12
    for index, (m_labels, npy_labels) in enumerate(zip(from_m, from_npy, strict=True)):
        assert np.array_equal(m_labels, npy_labels), f"clip {index + 1} differs"


@needs_ped2
def test_ped2_m_file_agrees_with_pixel_masks():
    from_m = parse_ucsd_m(PED2 / "UCSDped2.m", PED2_TEST_LENGTHS)
    from_masks = load_pixel_mask_labels(PED2 / "pixel_masks.npz")

    assert list(from_masks) == [f"Test{index:03d}_gt" for index in range(1, 13)]
    for index, (m_labels, mask_labels) in enumerate(
        zip(from_m, from_masks.values(), strict=True)
    ):
        assert np.array_equal(m_labels, mask_labels), f"clip {index + 1} differs"


def test_m_multiple_ranges_on_one_line(tmp_path):
    path = write_m_file(
        tmp_path / "UCSDped1.m",
        [
            "% ground truth",
            "TestVideoFile{end+1}.gt_frame = [1:10, 50:60];",
            "TestVideoFile{end+1}.gt_frame = [5 : 6 8:9];  % space separated",
            "TestVideoFile{end+1}.gt_frame = [7];",
            "TestVideoFile{end+1}.gt_frame = [];",
        ],
    )

    labels = parse_ucsd_m(path, [100, 10, 10, 5])

    assert np.flatnonzero(labels[0]).tolist() == list(range(0, 10)) + list(
        range(49, 60)
    )
    assert np.flatnonzero(labels[1]).tolist() == [4, 5, 7, 8]
    assert np.flatnonzero(labels[2]).tolist() == [6]
    assert labels[3].tolist() == [0, 0, 0, 0, 0]


def test_m_explicit_clip_indices(tmp_path):
    path = write_m_file(
        tmp_path / "gt.m",
        [
            "TestDataset_1{2}.gt_frame = [2:3];",
            "TestDataset_1{1}.gt_frame = [1:1];",
        ],
    )

    labels = parse_ucsd_m(path, [4, 4])

    assert labels[0].tolist() == [1, 0, 0, 0]
    assert labels[1].tolist() == [0, 1, 1, 0]


def test_m_range_beyond_clip_names_line(tmp_path):
    path = write_m_file(
        tmp_path / "UCSDped2.m",
        [
            "TestVideoFile{end+1}.gt_frame = [1:5];",
            "TestVideoFile{end+1}.gt_frame = [3:12];",
        ],
    )

    with pytest.raises(LabelError, match=r"UCSDped2\.m, line 3: range 3:12 exceeds"):
        parse_ucsd_m(path, [10, 10])


def test_m_clip_count_mismatch_raises(tmp_path):
    path = write_m_file(
        tmp_path / "UCSDped2.m", ["TestVideoFile{end+1}.gt_frame = [1:5];"]
    )

    with pytest.raises(LabelError, match=r"UCSDped2\.m .* 2 test clips were found"):
        parse_ucsd_m(path, [10, 10])


def test_m_unparsable_line_raises(tmp_path):
    path = write_m_file(tmp_path / "bad.m", ["TestVideoFile{end+1}.gt_frame = [1:5"])

    with pytest.raises(LabelError, match=r"bad\.m, line 2: cannot parse"):
        parse_ucsd_m(path, [10])


def test_m_reversed_range_raises(tmp_path):
    path = write_m_file(tmp_path / "bad.m", ["TestVideoFile{end+1}.gt_frame = [9:3];"])

    with pytest.raises(LabelError, match=r"line 2: invalid frame range '9:3'"):
        parse_ucsd_m(path, [10])


@pytest.mark.parametrize("shape", [(1, 7), (7,)])
def test_npy_labels_split_into_clips(tmp_path, shape):
    path = tmp_path / "frame_labels.npy"
    np.save(path, np.array([0, 1, 1, 0, 0, 0, 1]).reshape(shape))

    labels = load_npy_labels(path, [3, 4])

    assert [clip.tolist() for clip in labels] == [[0, 1, 1], [0, 0, 0, 1]]
    assert all(clip.dtype == np.int8 for clip in labels)


def test_npy_length_mismatch_gives_both_counts(tmp_path):
    path = tmp_path / "frame_labels.npy"
    np.save(path, np.zeros((1, 7), dtype=np.int64))

    with pytest.raises(LabelError, match=r"frame_labels\.npy has 7 .* have 8 frames"):
        load_npy_labels(path, [4, 4])


def test_npy_non_binary_values_raise(tmp_path):
    path = tmp_path / "scores.npy"
    np.save(path, np.array([0.0, 0.5, 1.0]))

    with pytest.raises(LabelError, match=r"scores\.npy must contain only 0 and 1"):
        load_npy_labels(path, [3])


def test_mat_vol_label_cells(tmp_path):
    masks = np.empty((1, 4), dtype=object)
    for index in range(4):
        masks[0, index] = np.zeros((6, 8), dtype=np.uint8)
    masks[0, 1][2, 3] = 1
    masks[0, 3][:, :] = 1
    path = tmp_path / "1_label.mat"
    scipy.io.savemat(path, {"volLabel": masks})

    labels = load_mat_labels(path)

    assert labels.dtype == np.int8
    assert labels.tolist() == [0, 1, 0, 1]


def test_mat_without_vol_label_raises(tmp_path):
    path = tmp_path / "2_label.mat"
    scipy.io.savemat(path, {"other": np.zeros(3)})

    with pytest.raises(LabelError, match=r"2_label\.mat contains no 'volLabel'"):
        load_mat_labels(path)


def test_labels_from_masks_any_pixel():
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[2, 3, 4] = True

    labels = labels_from_masks(masks)

    assert labels.dtype == np.int8
    assert labels.tolist() == [0, 0, 1]


def test_pixel_masks_npz_keys_and_dtype(tmp_path):
    path = tmp_path / "pixel_masks.npz"
    first = np.zeros((2, 3, 4), dtype=np.uint8)
    first[1, 0, 0] = 255
    np.savez(path, Test010_gt=np.zeros((1, 3, 4)), Test002_gt=first)

    masks = load_pixel_masks_npz(path)

    assert list(masks) == ["Test002_gt", "Test010_gt"]
    assert masks["Test002_gt"].dtype == bool
    assert labels_from_masks(masks["Test002_gt"]).tolist() == [0, 1]


def test_pixel_masks_npz_rejects_flat_array(tmp_path):
    path = tmp_path / "pixel_masks.npz"
    np.savez(path, Test001_gt=np.zeros((4, 4)))

    with pytest.raises(LabelError, match=r"'Test001_gt' in .*pixel_masks\.npz"):
        load_pixel_masks_npz(path)


def test_ucsd_gt_folder_of_bmp_masks(tmp_path):
    folder = tmp_path / "Test001_gt"
    folder.mkdir()
    for index, value in enumerate([0, 255, 0], start=1):
        mask = np.zeros((6, 8), dtype=np.uint8)
        mask[1, 1] = value
        assert cv2.imwrite(str(folder / f"{index:03d}.bmp"), mask)

    labels = load_mask_folder_labels(folder)

    assert labels.tolist() == [0, 1, 0]


def test_shanghaitech_frame_mask_folder(tmp_path):
    np.save(tmp_path / "01_0014.npy", np.array([0, 1, 1]))
    np.save(tmp_path / "01_0015.npy", np.array([0, 0]))

    labels = load_frame_mask_folder(tmp_path)

    assert list(labels) == ["01_0014", "01_0015"]
    assert labels["01_0014"].tolist() == [0, 1, 1]
    assert labels["01_0015"].dtype == np.int8


def test_labels_file_npz_vectors_and_masks(tmp_path):
    path = tmp_path / "labels.npz"
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 1, 1] = True
    np.savez(path, walk=np.array([[0, 1, 0]]), bike=masks)

    labels = load_labels_file(path)

    assert labels["walk"].tolist() == [0, 1, 0]
    assert labels["bike"].tolist() == [1, 0]


def test_labels_file_csv_one_based(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("clip,frame,label\ncam_b,2,1\ncam_b,1,0\ncam_a,1,1\n")

    labels = load_labels_file(path)

    assert labels["cam_a"].tolist() == [1]
    assert labels["cam_b"].tolist() == [0, 1]


def test_labels_file_csv_missing_frame_raises(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("cam,0,0\ncam,2,1\n")

    with pytest.raises(
        LabelError, match=r"labels\.csv: clip 'cam' has no row for frame 1"
    ):
        load_labels_file(path)


def test_labels_file_csv_bad_label_raises(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("cam,0,yes\n")

    with pytest.raises(LabelError, match=r"labels\.csv, line 1: label 'yes'"):
        load_labels_file(path)


def test_labels_file_pickled_npy_needs_opt_in(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array({"01": np.array([0, 1])}, dtype=object), allow_pickle=True)

    with pytest.raises(
        LabelError, match=r"labels\.npy contains pickled Python objects"
    ):
        load_labels_file(path)
    assert load_labels_file(path, allow_pickle=True)["01"].tolist() == [0, 1]


def test_clip_labels_from_concatenated_npy(tmp_path):
    path = tmp_path / "frame_labels.npy"
    np.save(path, np.array([1, 0, 0, 1, 1]))

    labels = load_clip_labels(path, ["01", "02"], [2, 3])

    assert [clip.tolist() for clip in labels] == [[1, 0], [0, 1, 1]]


def test_match_clip_labels_by_number():
    by_key = {"Test002_gt": np.array([1]), "Test001_gt": np.array([0])}

    labels = match_clip_labels(by_key, ["01", "02"], "masks.npz")

    assert [clip.tolist() for clip in labels] == [[0], [1]]


def test_match_clip_labels_missing_clip_raises():
    with pytest.raises(LabelError, match=r"No labels for test clip '03' in masks\.npz"):
        match_clip_labels({"01": np.array([0])}, ["01", "03"], "masks.npz")


def test_match_clip_labels_ambiguous_raises():
    by_key = {"1_label": np.array([0]), "Test001": np.array([1])}

    with pytest.raises(LabelError, match="matches several entries"):
        match_clip_labels(by_key, ["01"], "labels.npz")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Test001_gt", "1"),
        ("1_label", "1"),
        ("01", "1"),
        ("01_0014", "01_0014"),
        ("walkway", "walkway"),
    ],
)
def test_normalize_clip_key(name, expected):
    assert normalize_clip_key(name) == expected


@pytest.mark.parametrize("header", ["clip,frame,label\n", ""])
def test_labels_file_csv_ignores_bom(tmp_path, header):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{header}cam,0,0\ncam,1,1\n".encode())

    labels = load_labels_file(path)

    assert list(labels) == ["cam"]
    assert labels["cam"].tolist() == [0, 1]


@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf"])
def test_labels_file_csv_not_utf8_raises(tmp_path, prefix):
    path = tmp_path / "labels.csv"
    path.write_bytes(prefix + "clip,frame,label\ncafé,0,1\n".encode("latin-1"))

    with pytest.raises(LabelError, match=r"labels\.csv, line 2: invalid UTF-8") as info:
        load_labels_file(path)
    assert "Save the file as UTF-8" in str(info.value)
