"""Frame-by-frame reading of clips stored as image folders or video files.

Every reader yields uint8 RGB arrays of shape (H, W, 3), one frame at a time, so
memory stays bounded by one decoded frame regardless of the clip length.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from av.error import FFmpegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov")

# A stem such as "001" or "frame_0001": a fixed prefix followed by the frame number.
_NUMBERED_STEM = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")

logger = logging.getLogger(__name__)
# Folders that got the name-order warning, so that it is logged once per folder
# although a clip's folder is listed several times.
_WARNED_FOLDERS: set[Path] = set()


class VideoReadError(ValueError):
    """A clip that cannot be read: missing, empty, corrupt or inconsistent."""


class VideoNotFoundError(VideoReadError, FileNotFoundError):
    """A clip path that does not exist."""


def is_video_file(path: Path) -> bool:
    """Return True when ``path`` has one of the supported video extensions."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def is_image_file(path: Path) -> bool:
    """Return True when ``path`` has one of the supported image extensions."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """List the frame images of a folder in playback order.

    Files whose stems are numbers with a common prefix (``000.jpg``, ``frame_12.png``)
    are sorted by that number, so ``9.jpg`` comes before ``10.jpg``. Other names are
    sorted lexicographically, with a logged warning when that order differs from
    the order of the numbers in the names. Hidden files (``.DS_Store``,
    ``._001.tif``) and files with other extensions (``Thumbs.db``) are skipped.

    Raises
    ------
    VideoNotFoundError
        If ``folder`` does not exist.
    VideoReadError
        If ``folder`` is not a directory, contains no images, two images carry
        the same frame number, or numbered frames with a common prefix share the
        folder with images without a number (``cover.jpg`` and ``frame1.jpg``).
    """
    folder = Path(folder)
    if not folder.exists():
        raise VideoNotFoundError(
            f"Frame folder not found: {folder}. Check the dataset root and layout."
        )
    if not folder.is_dir():
        raise VideoReadError(f"Expected a folder of frame images, got a file: {folder}")

    images = [
        path
        for path in folder.iterdir()
        if not path.name.startswith(".") and is_image_file(path) and path.is_file()
    ]
    if not images:
        raise VideoReadError(
            f"No frame images in {folder}: expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}. Remove the empty clip folder or "
            "extract its frames again."
        )
    return _sort_frame_files(images, folder)


def _sort_frame_files(images: list[Path], folder: Path) -> list[Path]:
    matches = [_NUMBERED_STEM.match(path.stem) for path in images]
    prefixes = {match.group("prefix") for match in matches if match is not None}
    unnumbered = sorted(
        path.name for match, path in zip(matches, images, strict=True) if match is None
    )
    if len(prefixes) == 1 and unnumbered:
        numbered_name = min(
            (int(match.group("number")), path.name)
            for match, path in zip(matches, images, strict=True)
            if match is not None
        )[1]
        _raise_unnumbered(folder, unnumbered, numbered_name)
    if len(prefixes) != 1:
        by_name = sorted(images, key=lambda path: path.name)
        _warn_if_name_order_differs(folder, by_name)
        return by_name

    numbered = sorted(
        (int(match.group("number")), path.name, path)
        for match, path in zip(matches, images, strict=True)
    )
    for (number, name, _), (next_number, next_name, _) in zip(
        numbered, numbered[1:], strict=False
    ):
        if number == next_number:
            raise VideoReadError(
                f"Frame folder {folder} contains two images with frame number "
                f"{number}: {name} and {next_name}. Keep one image per frame."
            )
    return [path for _, _, path in numbered]


def _raise_unnumbered(folder: Path, unnumbered: list[str], numbered_name: str) -> None:
    listed = ", ".join(unnumbered[:5])
    if len(unnumbered) > 5:
        listed += f" and {len(unnumbered) - 5} more"
    raise VideoReadError(
        f"Frame folder {folder} contains numbered frames such as {numbered_name} "
        f"and images without a frame number: {listed}. Their "
        "place in the clip is unknown, so move them out of the clip folder, or "
        "rename them to their frame numbers."
    )


def _warn_if_name_order_differs(folder: Path, by_name: list[Path]) -> None:
    """Warn when name order puts ``frame10`` before ``frame9``, once per folder.

    Names whose numbers are zero-padded to one width, timestamps included, sort
    the same either way and get no warning.
    """
    by_number = sorted(by_name, key=lambda path: natural_sort_key(path.name))
    if by_number == by_name or folder in _WARNED_FOLDERS:
        return
    _WARNED_FOLDERS.add(folder)
    first, second = next(
        (named, numbered)
        for named, numbered in zip(by_name, by_number, strict=True)
        if named != numbered
    )
    logger.warning(
        "Frame folder %s has names that do not end in frame numbers after one "
        "common prefix, so its frames are read in name order, which puts %s "
        "before %s. If that order is wrong, rename the frames to one prefix and a "
        "frame number (000.jpg, 001.jpg, ...).",
        folder,
        first.name,
        second.name,
    )


def natural_sort_key(name: str) -> list[int | str]:
    """Return a sort key that orders embedded numbers by value (``2`` before ``10``)."""
    return [
        int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name)
    ]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image file as a uint8 RGB array of shape (H, W, 3).

    Grayscale images become three equal channels, an alpha channel is dropped, and
    16-bit images are scaled to 8 bits by OpenCV (``cv2.IMREAD_COLOR``).

    Raises
    ------
    VideoNotFoundError
        If the file does not exist.
    VideoReadError
        If the file is empty or OpenCV cannot decode it.
    """
    path = Path(path)
    try:
        # np.fromfile plus imdecode also handles non-ASCII paths, unlike cv2.imread.
        buffer = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as error:
        raise VideoNotFoundError(f"Image not found: {path}") from error
    except OSError as error:
        raise VideoReadError(f"Cannot read image {path}: {error}") from error

    image = None
    if buffer.size > 0:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        # OpenCV decodes some formats, such as 32-bit float TIFF, only unchanged.
        unchanged = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
        if unchanged is not None:
            raise VideoReadError(
                f"Cannot read image {path}: its samples are {unchanged.dtype}, but "
                "frames must have 8- or 16-bit integer samples. Convert the frames, "
                "for example to 8-bit PNG."
            )
        raise VideoReadError(
            f"Cannot decode image {path} ({buffer.size} bytes): the file is empty, "
            "truncated or not an image. Replace it with an intact copy of the frame."
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_frames(source: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """Yield the frames of a clip one at a time as uint8 RGB arrays (H, W, 3).

    ``source`` is a folder of frame images (see ``list_frame_files`` for the
    order) or a video file with a ``VIDEO_EXTENSIONS`` suffix. Videos are decoded
    with PyAV, and with OpenCV's ``VideoCapture`` when PyAV cannot open the file.

    Raises
    ------
    VideoNotFoundError
        If ``source`` does not exist.
    VideoReadError
        If the folder has no images, an image or the video cannot be decoded, the
        video ends before the frame count its container reports, or the frame size
        changes within the clip. The message names the file and, for videos, the
        index of the frame where decoding failed.
    """
    source = _check_source(source)
    if source.is_dir():
        # Listing eagerly makes a missing or empty folder raise at the call.
        return _iter_folder(source, list_frame_files(source))
    return _iter_video(source)


def first_frame(source: str | os.PathLike[str]) -> np.ndarray | None:
    """Decode only the first frame of a clip; None if the clip has no frames."""
    frames = iter_frames(source)
    try:
        return next(frames, None)
    finally:
        frames.close()


def count_frames(source: str | os.PathLike[str]) -> int:
    """Return the number of frames that ``iter_frames(source)`` yields.

    For folders this is the number of images, without decoding them. For videos it
    is the frame count stored in the container. When the container stores none,
    or only OpenCV can open the file, the frames are decoded and counted.
    """
    source = _check_source(source)
    if source.is_dir():
        return len(list_frame_files(source))

    try:
        container = av.open(str(source))
    except FFmpegError as error:
        return _count_frames_opencv(source, error)
    with container:
        stream = _first_video_stream(container, source)
        if stream.frames > 0:
            return stream.frames
        return sum(1 for _ in _decode_pyav(container, stream, source))


def _check_source(source: str | os.PathLike[str]) -> Path:
    source = Path(source)
    if not source.exists():
        raise VideoNotFoundError(
            f"Clip not found: {source}. Pass a folder of frame images or a video "
            f"file ({', '.join(VIDEO_EXTENSIONS)})."
        )
    if source.is_dir() or is_video_file(source):
        return source
    if is_image_file(source):
        raise VideoReadError(
            f"{source} is a single image. Pass the folder that contains the frames "
            "of the clip instead."
        )
    raise VideoReadError(
        f"Unsupported clip file {source}: expected a folder of frame images or a "
        f"video file ending in {', '.join(VIDEO_EXTENSIONS)}."
    )


def _iter_folder(folder: Path, files: list[Path]) -> Iterator[np.ndarray]:
    first_shape = None
    for path in files:
        frame = read_image(path)
        if first_shape is None:
            first_shape = frame.shape
        elif frame.shape != first_shape:
            raise VideoReadError(
                f"Frame {path} has size {frame.shape[1]}x{frame.shape[0]} but the "
                f"first frame {files[0].name} of the clip has size "
                f"{first_shape[1]}x{first_shape[0]}. Resize the frames of {folder} "
                "to one size."
            )
        yield frame


def _iter_video(path: Path) -> Iterator[np.ndarray]:
    try:
        container = av.open(str(path))
    except FFmpegError as error:
        yield from _iter_video_opencv(path, error)
        return

    with container:
        stream = _first_video_stream(container, path)
        expected = stream.frames
        index = 0
        first_shape = None
        for frame in _decode_pyav(container, stream, path):
            array = frame.to_ndarray(format="rgb24")
            if first_shape is None:
                first_shape = array.shape
            elif array.shape != first_shape:
                _raise_size_change(path, index, array.shape, first_shape)
            yield array
            index += 1

    # NOTE: this trusts the frame count that the container header stores. A file
    # whose header count is wrong but whose frames all decode is rejected too,
    # because count_frames would then disagree with the frames yielded here.
    if expected > 0 and index != expected:
        raise VideoReadError(
            f"Video {path} ended at frame {index} but its container reports "
            f"{expected} frames: the file is truncated or corrupt. Download or "
            "copy it again, or re-encode it (for example with ffmpeg)."
        )


def _first_video_stream(container: av.container.InputContainer, path: Path):
    if not container.streams.video:
        raise VideoReadError(f"{path} contains no video stream.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _decode_pyav(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    index = 0
    decoded = container.decode(stream)
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except FFmpegError as error:
            raise VideoReadError(
                f"Decoding {path} failed at frame {index}: {error}. The file is "
                "truncated or corrupt. Download or copy it again, or re-encode it "
                "(for example with ffmpeg)."
            ) from error
        yield frame
        index += 1


def _open_opencv(path: Path, pyav_error: FFmpegError) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(
            f"Cannot open video {path}: PyAV failed ({pyav_error}) and OpenCV "
            "VideoCapture failed too. The file is truncated, corrupt or uses an "
            "unsupported codec. Download it again or re-encode it (for example with "
            "ffmpeg)."
        ) from pyav_error
    return capture


def _iter_video_opencv(path: Path, pyav_error: FFmpegError) -> Iterator[np.ndarray]:
    # NOTE: VideoCapture reports no decoding errors, so a truncated file read on
    # this path ends early without an error.
    capture = _open_opencv(path, pyav_error)
    try:
        index = 0
        first_shape = None
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            array = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if first_shape is None:
                first_shape = array.shape
            elif array.shape != first_shape:
                _raise_size_change(path, index, array.shape, first_shape)
            yield array
            index += 1
    finally:
        capture.release()


def _count_frames_opencv(path: Path, pyav_error: FFmpegError) -> int:
    # CAP_PROP_FRAME_COUNT is an estimate for some containers, so count by grabbing.
    capture = _open_opencv(path, pyav_error)
    try:
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def _raise_size_change(
    path: Path, index: int, shape: tuple[int, ...], first_shape: tuple[int, ...]
) -> None:
    raise VideoReadError(
        f"Frame {index} of video {path} has size {shape[1]}x{shape[0]} but frame 0 "
        f"has size {first_shape[1]}x{first_shape[0]}. Re-encode the video at one "
        "frame size."
    )
