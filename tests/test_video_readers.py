"""Tests for mulde.video.readers on image folders, video files and broken input."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from av.error import FFmpegError
from conftest import PED2

from mulde.video import readers
from mulde.video.readers import (
    VideoNotFoundError,
    VideoReadError,
    count_frames,
    iter_frames,
    list_frame_files,
    read_image,
)

FRAME_HEIGHT, FRAME_WIDTH = 48, 64


def write_gray_frames(folder: Path, names: list[str], values: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in zip(names, values, strict=True):
        image = np.full((FRAME_HEIGHT, FRAME_WIDTH), value, dtype=np.uint8)
        assert cv2.imwrite(str(folder / name), image)


def write_video(path: Path, fourcc: str, n_frames: int) -> list[int]:
    """Write frames of constant gray levels and return those levels."""
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (FRAME_WIDTH, FRAME_HEIGHT)
    )
    assert writer.isOpened()
    levels = [20 + 10 * index for index in range(n_frames)]
    for level in levels:
        writer.write(np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), level, dtype=np.uint8))
    writer.release()
    return levels


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_folder_numeric_names_sorted_by_number(tmp_path):
    write_gray_frames(tmp_path, ["10.png", "2.png", "1.png"], [100, 20, 10])
    (tmp_path / "Thumbs.db").write_bytes(b"not an image")
    (tmp_path / ".DS_Store").write_bytes(b"not an image")
    (tmp_path / "._1.png").write_bytes(b"AppleDouble metadata")

    names = [path.name for path in list_frame_files(tmp_path)]
    frames = list(iter_frames(tmp_path))

    assert names == ["1.png", "2.png", "10.png"]
    assert [int(frame[0, 0, 0]) for frame in frames] == [10, 20, 100]
    assert count_frames(tmp_path) == 3


def test_folder_prefixed_numbers_sorted_by_number(tmp_path):
    write_gray_frames(tmp_path, ["frame_9.jpg", "frame_10.jpg"], [50, 60])

    names = [path.name for path in list_frame_files(tmp_path)]

    assert names == ["frame_9.jpg", "frame_10.jpg"]


def test_folder_mixed_names_sorted_lexicographically(tmp_path):
    write_gray_frames(tmp_path, ["b.png", "a10.png", "a9.png", "c_2.png"], [1, 2, 3, 4])

    names = [path.name for path in list_frame_files(tmp_path)]

    assert names == ["a10.png", "a9.png", "b.png", "c_2.png"]


def test_grayscale_tif_becomes_equal_rgb_channels(tmp_path):
    image = np.arange(FRAME_HEIGHT * FRAME_WIDTH, dtype=np.uint32) % 256
    image = image.reshape(FRAME_HEIGHT, FRAME_WIDTH).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "001.tif"), image)

    frame = next(iter_frames(tmp_path))

    assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
    assert frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], image)
    np.testing.assert_array_equal(frame[..., 1], image)
    np.testing.assert_array_equal(frame[..., 2], image)


def test_color_png_returned_as_rgb(tmp_path):
    bgr = np.zeros((FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    assert cv2.imwrite(str(tmp_path / "0.png"), bgr)

    frame = read_image(tmp_path / "0.png")

    assert frame[0, 0].tolist() == [200, 0, 0]


@pytest.mark.skipif(not PED2.is_dir(), reason=f"Ped2 data not found at {PED2}")
def test_ped2_first_frame_is_equal_channel_rgb():
    clip = PED2 / "testing" / "frames" / "01"

    frame = next(iter_frames(clip))

    assert frame.shape == (240, 360, 3)
    assert frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], frame[..., 1])
    np.testing.assert_array_equal(frame[..., 1], frame[..., 2])
    assert count_frames(clip) == 180


@pytest.mark.parametrize(
    ("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")]
)
def test_video_read_back_and_counted(tmp_path, name, fourcc):
    path = tmp_path / name
    levels = write_video(path, fourcc, n_frames=12)

    frames = list(iter_frames(path))

    assert count_frames(path) == 12
    assert len(frames) == 12
    assert all(frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) for frame in frames)
    assert all(frame.dtype == np.uint8 for frame in frames)
    means = [float(frame.mean()) for frame in frames]
    np.testing.assert_allclose(means, levels, atol=4)


def test_video_without_stored_count_is_decoded_to_count(tmp_path):
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = (
            FRAME_WIDTH,
            FRAME_HEIGHT,
            "yuv420p",
        )
        for index in range(7):
            image = np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), 30 * index, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0

    assert count_frames(path) == 7
    assert len(list(iter_frames(path))) == 7


def test_truncated_avi_names_file_and_frame(tmp_path):
    path = tmp_path / "cut.avi"
    write_video(path, "MJPG", n_frames=20)
    truncate(path, 0.6)

    with pytest.raises(VideoReadError, match=r"cut\.avi.*frame \d+") as excinfo:
        list(iter_frames(path))

    assert "truncated or corrupt" in str(excinfo.value)


def test_truncated_mp4_names_file(tmp_path):
    path = tmp_path / "cut.mp4"
    write_video(path, "mp4v", n_frames=20)
    truncate(path, 0.5)

    with pytest.raises(VideoReadError, match=r"cut\.mp4"):
        list(iter_frames(path))
    with pytest.raises(VideoReadError, match=r"cut\.mp4"):
        count_frames(path)


def test_opencv_fallback_when_pyav_cannot_open(tmp_path, monkeypatch):
    path = tmp_path / "clip.avi"
    levels = write_video(path, "MJPG", n_frames=5)

    def fail_open(*args, **kwargs):
        raise FFmpegError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(readers.av, "open", fail_open)
    frames = list(iter_frames(path))

    assert count_frames(path) == 5
    assert len(frames) == 5
    np.testing.assert_allclose([frame.mean() for frame in frames], levels, atol=4)


def test_missing_path_raises_not_found(tmp_path):
    missing = tmp_path / "no_such_clip"

    with pytest.raises(VideoNotFoundError, match="no_such_clip"):
        iter_frames(missing)
    with pytest.raises(FileNotFoundError, match="no_such_clip"):
        count_frames(missing)


def test_empty_folder_raises(tmp_path):
    clip = tmp_path / "Test007"
    clip.mkdir()
    (clip / "Thumbs.db").write_bytes(b"")

    with pytest.raises(VideoReadError, match=r"No frame images in .*Test007"):
        iter_frames(clip)
    with pytest.raises(VideoReadError, match="Test007"):
        count_frames(clip)


def test_garbage_jpg_names_file(tmp_path):
    write_gray_frames(tmp_path, ["000.jpg"], [10])
    (tmp_path / "001.jpg").write_bytes(b"this is not a jpeg")

    frames = iter_frames(tmp_path)
    next(frames)

    with pytest.raises(VideoReadError, match=r"001\.jpg"):
        next(frames)


def test_empty_image_file_names_file(tmp_path):
    (tmp_path / "000.png").write_bytes(b"")

    with pytest.raises(VideoReadError, match=r"000\.png \(0 bytes\)"):
        list(iter_frames(tmp_path))


def test_inconsistent_frame_size_names_file(tmp_path):
    write_gray_frames(tmp_path, ["0.png"], [10])
    assert cv2.imwrite(str(tmp_path / "1.png"), np.zeros((10, 10), dtype=np.uint8))

    with pytest.raises(VideoReadError, match=r"1\.png has size 10x10.*64x48"):
        list(iter_frames(tmp_path))


def test_duplicate_frame_numbers_raise(tmp_path):
    write_gray_frames(tmp_path, ["1.png", "01.jpg"], [10, 20])

    with pytest.raises(VideoReadError, match="two images with frame number 1"):
        list_frame_files(tmp_path)


def test_unsupported_file_raises(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    image = tmp_path / "single.png"
    write_gray_frames(tmp_path, ["single.png"], [1])

    with pytest.raises(VideoReadError, match=r"notes\.txt"):
        iter_frames(path)
    with pytest.raises(VideoReadError, match=r"single\.png is a single image"):
        iter_frames(image)


def test_float_tiff_frame_names_its_sample_type(tmp_path):
    ok, encoded = cv2.imencode(".tif", np.full((20, 30), 0.5, dtype=np.float32))
    assert ok
    path = tmp_path / "000.tif"
    path.write_bytes(encoded.tobytes())
    with pytest.raises(VideoReadError, match=r"000\.tif: its samples are float32"):
        read_image(path)
