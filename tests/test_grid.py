"""Tests of the grid-cell features on synthetic motion and real Ped2 frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import PED2

from mulde.features.backbone import get_backbone
from mulde.features.cache import FeatureConfig, build_backbone, cache_folder
from mulde.features.grid import (
    cell_velocity,
    extract_grid_features,
    foreground_cells,
    sample_feature_map,
)
from mulde.features.objects import torch_threads
from mulde.features.proposals import ProposalConfig

PED2_CLIP = PED2 / "testing" / "frames" / "01"


@pytest.fixture(scope="module")
def backbone():
    with torch_threads(1):
        yield get_backbone("efficientnet_lite0", batch_size=8)


def test_foreground_cells_threshold():
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[0:10, 0:10] = 255  # 25 % of cell (0, 0)
    mask[10:20, 20:21] = 255  # 10 px, 2.5 % of cell (0, 1)
    mask[35:40, 45:50] = 255  # 25 px in the cut cell (1, 2)

    rows, columns = foreground_cells(mask, cell=20, min_fraction=0.05)

    assert rows.tolist() == [0, 1]
    assert columns.tolist() == [0, 2]


def test_foreground_cells_zero_fraction_skips_empty_cells():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[25, 5] = 1

    rows, columns = foreground_cells(mask, cell=20, min_fraction=0.0)

    assert list(zip(rows.tolist(), columns.tolist(), strict=True)) == [(1, 0)]


def test_cell_velocity_uses_foreground_pixels_only():
    velocity = np.zeros((20, 40, 2), dtype=np.float32)
    velocity[..., 0] = 9.0  # background moves fast but is not foreground
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[0:10, 0:20] = 255
    velocity[0:10, 0:20] = (3.0, 4.0)  # speed 5 on the object
    velocity[0:1, 0:20] = (6.0, 8.0)  # speed 10 on one row of 20 pixels

    features = cell_velocity(velocity, mask, np.array([0]), np.array([0]), cell=20)

    assert features.shape == (1, 2)
    assert features[0, 0] == pytest.approx(5.5)  # (20 * 10 + 180 * 5) / 200
    # Linear interpolation between sorted values 179 (5.0) and 180 (10.0).
    assert features[0, 1] == pytest.approx(5.5)


def test_sample_feature_map_is_bilinear():
    # A map that is linear in its row and column index is interpolated exactly.
    rows, columns = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
    feature_map = np.stack([rows, columns]).astype(np.float32)  # (2, 4, 6)
    frame_shape = (40, 60)  # 10 px per map position
    points = np.array([[15.0, 25.0], [20.0, 30.0], [0.0, 0.0], [39.0, 59.0]])

    sampled = sample_feature_map(feature_map, points, frame_shape)

    np.testing.assert_allclose(sampled[0], [1.0, 2.0])
    np.testing.assert_allclose(sampled[1], [1.5, 2.5])
    np.testing.assert_allclose(sampled[2], [0.0, 0.0])  # clamped at the border
    np.testing.assert_allclose(sampled[3], [3.0, 5.0])


def moving_square(n_frames: int, speed: float) -> list[np.ndarray]:
    """RGB frames of a textured square moving right at ``speed`` px/frame."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(
        rng.integers(60, 120, (96, 128), dtype=np.uint8), (5, 5), 1.5
    )
    texture = cv2.GaussianBlur(
        rng.integers(150, 255, (24, 24), dtype=np.uint8), (3, 3), 1.0
    )
    frames = []
    for t in range(n_frames):
        frame = background.copy()
        x0 = int(round(8 + speed * t))
        frame[40:64, x0 : x0 + 24] = texture
        frames.append(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))
    return frames


def test_grid_features_measure_square_speed(backbone):
    frames = moving_square(24, speed=2.0)
    config = FeatureConfig(
        batch_size=8,
        precision="float32",
        flow_preset="medium",
        proposals=ProposalConfig(method="median", background_frames=24),
    )

    features = extract_grid_features(lambda: iter(frames), config, backbone)

    assert features.n_frames == 24
    assert set(features.groups) == {"velocity", "appearance", "geometry"}
    assert features.groups["appearance"].shape == (features.n_rows, 1280)
    # Cells over the middle of the square, after the flow gap of 4 frames.
    late = features.frame_index >= 8
    boxes = features.boxes[late]
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (centre_y > 40) & (centre_y < 64)
    speeds = features.groups["velocity"][late][inside, 0]
    assert len(speeds) > 0
    assert np.median(speeds) == pytest.approx(2.0, abs=0.5)
    geometry = features.groups["geometry"]
    assert ((geometry >= 0) & (geometry <= 1)).all()


def test_grid_features_of_static_clip_have_no_rows(backbone):
    frames = [np.full((48, 64, 3), 90, dtype=np.uint8)] * 4

    features = extract_grid_features(
        lambda: iter(frames), FeatureConfig(precision="float32"), backbone
    )

    assert features.n_frames == 4
    assert features.n_rows == 0
    assert features.groups["velocity"].shape == (0, 2)
    assert features.groups["appearance"].shape == (0, 1280)


@pytest.mark.skipif(not PED2_CLIP.is_dir(), reason=f"Ped2 not found at {PED2_CLIP}")
def test_grid_features_on_ped2(backbone):
    paths = sorted(PED2_CLIP.glob("*.jpg"))[:12]
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    config = FeatureConfig(batch_size=8, precision="float32")

    features = extract_grid_features(lambda: iter(frames), config, backbone)

    assert features.n_frames == 12
    per_frame = np.bincount(features.frame_index, minlength=12)
    # About 20 walking people in 240 x 360 frames: tens of 20 px cells each.
    assert per_frame.min() >= 10
    assert per_frame.max() <= 200
    boxes = features.boxes
    assert (boxes[:, 2] - boxes[:, 0] <= 20).all()
    assert (boxes[:, 2] <= 360).all()
    assert (boxes[:, 3] <= 240).all()
    speed = features.groups["velocity"]
    assert np.isfinite(speed).all()
    # Pedestrians walk at about 0.7 px/frame in Ped2.
    assert 0.2 < np.median(speed[:, 0]) < 2.0
    assert (speed[:, 1] >= 0).all()


def test_precision_is_part_of_cache_key():
    fp32 = FeatureConfig(precision="float32")
    bf16 = FeatureConfig(precision="bfloat16")

    assert fp32.compute_dtype() == torch.float32
    assert bf16.compute_dtype() == torch.bfloat16
    assert cache_folder("c", fp32) != cache_folder("c", bf16)


def test_auto_precision_keeps_object_crops_float32():
    auto_object = FeatureConfig(mode="object", precision="auto")

    assert auto_object.compute_dtype() == torch.float32
    assert build_backbone(auto_object).compute_dtype == torch.float32


def test_feature_config_rejects_bad_grid_values():
    with pytest.raises(
        ValueError, match="grid_cell must be between 4 and 512 pixels, got 0"
    ):
        FeatureConfig(grid_cell=0)
    with pytest.raises(ValueError, match="grid_min_foreground must be between"):
        FeatureConfig(grid_min_foreground=1.5)
    with pytest.raises(ValueError, match="precision"):
        FeatureConfig(precision="fp8")


@pytest.mark.parametrize("shape, cell", [((240, 360), 20), ((97, 131), 16)])
def test_cell_velocity_matches_numpy_percentile(shape, cell):
    rng = np.random.default_rng(3)
    velocity = rng.normal(size=(*shape, 2)).astype(np.float32)
    mask = (rng.random(shape) < 0.3).astype(np.uint8)
    rows, columns = foreground_cells(mask, cell, 0.1)

    features = cell_velocity(velocity, mask, rows, columns, cell)

    magnitude = np.hypot(velocity[..., 0], velocity[..., 1])
    assert len(rows) > 10
    for index, (row, column) in enumerate(zip(rows, columns, strict=True)):
        block = np.s_[
            row * cell : (row + 1) * cell, column * cell : (column + 1) * cell
        ]
        speeds = magnitude[block][mask[block] > 0]
        assert features[index, 0] == pytest.approx(speeds.mean(), rel=1e-5)
        assert features[index, 1] == pytest.approx(np.percentile(speeds, 90), rel=1e-5)


def test_backbone_scale_keeps_cells_changes_appearance(backbone):
    frames = moving_square(12, speed=2.0)
    base = {"batch_size": 8, "precision": "float32", "flow_preset": "medium"}
    base["proposals"] = ProposalConfig(method="median", background_frames=12)
    plain = extract_grid_features(lambda: iter(frames), FeatureConfig(**base), backbone)
    scaled = extract_grid_features(
        lambda: iter(frames), FeatureConfig(**base, grid_backbone_scale=2.0), backbone
    )

    np.testing.assert_array_equal(scaled.boxes, plain.boxes)
    np.testing.assert_array_equal(scaled.groups["velocity"], plain.groups["velocity"])
    assert scaled.groups["appearance"].shape == plain.groups["appearance"].shape
    difference = scaled.groups["appearance"] - plain.groups["appearance"]
    assert np.abs(difference).mean() > 0.01


def test_backbone_scale_keys_cache_only_when_changed():
    default = FeatureConfig()
    assert "grid_backbone_scale" in default.to_dict()
    assert cache_folder("c", default) == cache_folder("c", FeatureConfig())
    scaled = FeatureConfig(grid_backbone_scale=2.0)
    assert cache_folder("c", scaled) != cache_folder("c", default)
    with pytest.raises(ValueError, match="grid_backbone_scale"):
        FeatureConfig(grid_backbone_scale=0.0)
