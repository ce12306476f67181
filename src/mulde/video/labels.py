"""Parsers for frame-level ground truth in the formats that public datasets use.

Every parser returns int8 arrays with one entry per frame, 1 = anomalous and
0 = normal, in playback order.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from mulde.video.readers import list_frame_files, natural_sort_key, read_image

logger = logging.getLogger(__name__)

# One clip entry of a UCSD ground-truth file, for example
# "TestVideoFile{end+1}.gt_frame = [5:90, 140:200];" or "Test{3}.gt_frame = [1:10];".
_UCSD_GT_LINE = re.compile(
    r"^\s*\w+\s*\{\s*(?P<index>end\s*\+\s*1|\d+)\s*\}\s*\.\s*gt_frame\s*=\s*"
    r"\[(?P<ranges>[^\]]*)\]\s*;?\s*$"
)
_UCSD_RANGE = re.compile(r"^(?P<start>\d+)(?::(?P<end>\d+))?$")

# Suffixes that label files add to a clip name: "Test001_gt", "1_label".
_LABEL_KEY_SUFFIXES = ("_gt", "_label", "_labels", "_mask")
_NUMBERED_KEY = re.compile(r"^[a-z]*_?(?P<number>\d+)$")


class LabelError(ValueError):
    """Ground truth that is malformed or does not fit the clips it describes."""


def parse_ucsd_m(
    path: str | os.PathLike[str], clip_lengths: Sequence[int]
) -> list[np.ndarray]:
    """Parse a UCSD ``UCSDped1.m`` or ``UCSDped2.m`` ground-truth file.

    Each ``<name>{end+1}.gt_frame = [a:b, c:d];`` line describes the next test clip
    with 1-based inclusive frame ranges. A ``{k}`` index in place of ``{end+1}``
    sets clip k (1-based). A bare number is a one-frame range, and ``%`` starts a
    MATLAB comment. Lines without ``gt_frame`` are ignored.

    Parameters
    ----------
    path : path-like
        The ``.m`` file.
    clip_lengths : sequence of int
        Frame count of each test clip, in clip order.

    Returns
    -------
    list of numpy.ndarray
        One int8 array of shape (clip_lengths[i],) per clip.

    Raises
    ------
    LabelError
        If a ``gt_frame`` line cannot be parsed, a range is empty or exceeds its
        clip, a clip index repeats, or the file describes a different number of
        clips than ``clip_lengths`` has.
    """
    path = Path(path)
    ranges_by_clip: dict[int, list[tuple[int, int, int]]] = {}
    next_index = 1
    for line_number, raw_line in enumerate(_read_text(path).splitlines(), start=1):
        line = raw_line.split("%", 1)[0]
        if "gt_frame" not in line:
            continue
        match = _UCSD_GT_LINE.match(line)
        if match is None:
            raise LabelError(
                f"{path}, line {line_number}: cannot parse {raw_line.strip()!r}. "
                "Expected '<name>{end+1}.gt_frame = [start:end, ...];'."
            )
        index_text = match.group("index")
        index = next_index if index_text.startswith("end") else int(index_text)
        if index in ranges_by_clip or index < 1:
            raise LabelError(
                f"{path}, line {line_number}: clip index {index} is invalid or "
                "already defined."
            )
        ranges_by_clip[index] = [
            (start, end, line_number)
            for start, end in _parse_ucsd_ranges(
                match.group("ranges"), path, line_number
            )
        ]
        next_index = max(ranges_by_clip) + 1

    if sorted(ranges_by_clip) != list(range(1, len(clip_lengths) + 1)):
        raise LabelError(
            f"{path} defines gt_frame for clips {sorted(ranges_by_clip)} but "
            f"{len(clip_lengths)} test clips were found. Expected one entry for "
            "each test clip, in order."
        )

    labels = []
    for index, length in enumerate(clip_lengths, start=1):
        clip_labels = np.zeros(int(length), dtype=np.int8)
        for start, end, line_number in ranges_by_clip[index]:
            if end > length:
                raise LabelError(
                    f"{path}, line {line_number}: range {start}:{end} exceeds the "
                    f"{length} frames of test clip {index}. Check that the file "
                    "belongs to these clips."
                )
            clip_labels[start - 1 : end] = 1
        labels.append(clip_labels)
    return labels


def _parse_ucsd_ranges(
    text: str, path: Path, line_number: int
) -> list[tuple[int, int]]:
    # MATLAB separates elements by commas or spaces and allows spaces around ":".
    tokens = re.split(r"[\s,]+", re.sub(r"\s*:\s*", ":", text).strip())
    ranges = []
    for token in filter(None, tokens):
        match = _UCSD_RANGE.match(token)
        if match is None:
            raise LabelError(
                f"{path}, line {line_number}: invalid frame range {token!r}. "
                "Expected 'start:end' or a single frame number."
            )
        start = int(match.group("start"))
        end = int(match.group("end") or start)
        if start < 1 or end < start:
            raise LabelError(
                f"{path}, line {line_number}: invalid frame range {token!r}. Frames "
                "are 1-based and start must not exceed end."
            )
        ranges.append((start, end))
    return ranges


def load_npy_labels(
    path: str | os.PathLike[str], clip_lengths: Sequence[int]
) -> list[np.ndarray]:
    """Split a ``.npy`` array of concatenated frame labels into clips.

    The file contains one array of shape (N,) or (1, N), for example the labels of
    all test clips in clip order. ``sum(clip_lengths)`` must equal N.

    Raises
    ------
    LabelError
        If the array has another shape, values other than 0 and 1, or a total
        length that differs from ``sum(clip_lengths)``.
    """
    path = Path(path)
    labels = _as_label_vector(_load_npy(path), f"{path}")
    if not clip_lengths:
        raise LabelError(f"No test clips to assign the labels in {path} to.")
    total = int(sum(clip_lengths))
    if labels.size != total:
        raise LabelError(
            f"{path} has {labels.size} frame labels but the {len(clip_lengths)} test "
            f"clips have {total} frames. Use the labels file of this dataset split."
        )
    boundaries = np.cumsum([int(length) for length in clip_lengths])[:-1]
    return [part.copy() for part in np.split(labels, boundaries)]


def load_mat_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read frame labels from an Avenue-style ``N_label.mat`` mask file.

    The file contains ``volLabel``, a MATLAB cell array with one (H, W) mask per
    frame. A frame is anomalous when any pixel of its mask is set.

    Raises
    ------
    LabelError
        If the file cannot be read or contains no ``volLabel`` cell array.
    """
    path = Path(path)
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as error:
        raise LabelError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy.io.loadmat cannot "
            "read. Save it again in MATLAB with the '-v7' option."
        ) from error
    except (OSError, ValueError, scipy.io.matlab.MatReadError) as error:
        raise LabelError(f"Cannot read MATLAB file {path}: {error}") from error

    if "volLabel" not in contents:
        keys = sorted(key for key in contents if not key.startswith("__"))
        raise LabelError(
            f"{path} contains no 'volLabel' variable (variables: {keys}). Expected "
            "the Avenue per-frame mask cell array."
        )
    cells = np.asarray(contents["volLabel"])
    if cells.dtype != object:
        raise LabelError(
            f"'volLabel' in {path} is a {cells.dtype} array of shape {cells.shape}, "
            "not a cell array of per-frame masks."
        )
    labels = []
    shape = None
    for index, cell in enumerate(cells.ravel()):
        mask = np.asarray(cell)
        if mask.ndim != 2 or mask.size == 0:
            raise LabelError(
                f"'volLabel' cell {index} in {path} has shape {mask.shape}; "
                "expected a non-empty (H, W) mask per frame."
            )
        if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
            raise LabelError(
                f"'volLabel' cell {index} in {path} contains {mask.dtype} values; "
                "expected a numeric or logical mask."
            )
        if not np.isfinite(mask).all():
            raise LabelError(
                f"'volLabel' cell {index} in {path} contains NaN or infinite "
                "values; expected 0 for normal and nonzero for anomalous pixels."
            )
        if shape is not None and mask.shape != shape:
            raise LabelError(
                f"'volLabel' cell {index} in {path} has shape {mask.shape}, "
                f"unlike the {shape} of the cells before it."
            )
        shape = mask.shape
        labels.append(np.any(mask != 0))
    return np.array(labels, dtype=np.int8)


def labels_from_masks(masks: np.ndarray) -> np.ndarray:
    """Reduce pixel masks of shape (T, H, W) to frame labels of shape (T,).

    A frame is anomalous (1) when any pixel of its mask is nonzero.
    """
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise ValueError(
            f"Expected pixel masks of shape (T, H, W), got shape {masks.shape}."
        )
    return np.any(masks != 0, axis=tuple(range(1, masks.ndim))).astype(np.int8)


def load_pixel_masks_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load per-clip pixel masks from an ``.npz`` file, one (T, H, W) array per key.

    Keys keep their stored names (``Test001_gt`` for UCSD) and come in natural
    order. Arrays are returned as bool. The file is read with
    ``allow_pickle=False``.

    Raises
    ------
    LabelError
        If the file cannot be read or an array is not three-dimensional.
    """
    path = Path(path)
    masks = {}
    with _open_npz(path) as archive:
        for key in sorted(archive.files, key=natural_sort_key):
            array = _npz_array(archive, key, path)
            if array.ndim != 3:
                raise LabelError(
                    f"Array {key!r} in {path} has shape {array.shape}, expected "
                    "pixel masks of shape (T, H, W)."
                )
            masks[key] = array.astype(bool, copy=False)
    return masks


def load_pixel_mask_labels(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load an ``.npz`` of per-clip pixel masks as frame labels, one key at a time.

    Same keys as ``load_pixel_masks_npz``, but only one clip's masks are in memory
    at once, which matters because decompressed masks take one byte per pixel.
    """
    path = Path(path)
    labels = {}
    with _open_npz(path) as archive:
        for key in sorted(archive.files, key=natural_sort_key):
            array = _npz_array(archive, key, path)
            if array.ndim != 3:
                raise LabelError(
                    f"Array {key!r} in {path} has shape {array.shape}, expected "
                    "pixel masks of shape (T, H, W)."
                )
            labels[key] = labels_from_masks(array)
    return labels


def load_mask_folder_labels(folder: str | os.PathLike[str]) -> np.ndarray:
    """Read frame labels from a UCSD ``TestNNN_gt`` folder of per-frame mask images.

    A frame is anomalous when any pixel of its mask image is nonzero. Mask files
    are ordered like frames (see ``readers.list_frame_files``).
    """
    files = list_frame_files(folder)
    return np.array([np.any(read_image(path)) for path in files], dtype=np.int8)


def load_frame_mask_folder(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a folder of per-clip ``<clip>.npy`` frame-label vectors.

    This is the ShanghaiTech ``testing/test_frame_mask`` layout: one (T,) array of
    0/1 per test clip, named after the clip. Keys are the file stems.

    Raises
    ------
    LabelError
        If the folder contains no ``.npy`` files or a file is not a 0/1 vector.
    """
    folder = Path(folder)
    files = sorted(
        (
            path
            for path in folder.glob("*.npy")
            if path.is_file() and not path.name.startswith(".")
        ),
        key=lambda path: natural_sort_key(path.stem),
    )
    if not files:
        raise LabelError(
            f"No .npy label files in {folder}. Expected one <clip>.npy per test clip."
        )
    return {path.stem: _as_label_vector(_load_npy(path), f"{path}") for path in files}


def load_mat_label_folder(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load an Avenue ``testing_label_mask`` folder of ``N_label.mat`` files.

    Keys are the file stems (``1_label``), in natural order.
    """
    folder = Path(folder)
    files = sorted(
        (path for path in folder.glob("*.mat") if not path.name.startswith(".")),
        key=lambda path: natural_sort_key(path.stem),
    )
    if not files:
        raise LabelError(
            f"No .mat label files in {folder}. Expected one N_label.mat per test clip."
        )
    return {path.stem: load_mat_labels(path) for path in files}


def load_labels_file(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> dict[str, np.ndarray]:
    """Load per-clip frame labels keyed by clip name.

    Accepted inputs:

    - ``.npz`` with one array per clip. A (T,) or (1, T) array is a label vector,
      and a (T, H, W) array is pixel masks, reduced per frame.
    - ``.npy`` containing a pickled ``{clip: labels}`` dict. Loading it runs pickle,
      so it requires ``allow_pickle=True`` and must come from a trusted source.
    - ``.csv`` with columns ``clip,frame,label``, in UTF-8 with or without a byte
      order mark. The header row is optional.
      Frame numbers must be contiguous per clip and are 0-based, or 1-based when
      the smallest frame number in the file is 1.
    - a folder of ``<clip>.npy`` vectors (ShanghaiTech) or ``N_label.mat`` files
      (Avenue).

    Raises
    ------
    LabelError
        If the file cannot be read or does not match one of these formats.
    """
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.mat")):
            return load_mat_label_folder(path)
        return load_frame_mask_folder(path)

    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz_labels(path)
    if suffix == ".npy":
        return _load_npy_dict(path, allow_pickle)
    if suffix == ".csv":
        return _load_csv_labels(path)
    raise LabelError(
        f"Unsupported labels file {path}: expected .npz, .npy, .csv, a UCSD .m file "
        "or a folder of per-clip .npy or .mat files."
    )


def load_clip_labels(
    path: str | os.PathLike[str],
    clip_names: Sequence[str],
    clip_lengths: Sequence[int],
) -> list[np.ndarray]:
    """Load the labels of the given test clips from any supported source.

    A UCSD ``.m`` file and a ``.npy`` of concatenated labels are assigned to the
    clips by order. Sources keyed by clip name (see ``load_labels_file``) are
    matched with ``match_clip_labels``. The lengths of the returned arrays are not
    checked against ``clip_lengths`` here, except for the order-based formats,
    which need them to split the labels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Labels file not found: {path}")
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".m":
        return parse_ucsd_m(path, clip_lengths)
    if path.is_file() and suffix == ".npy" and not _npy_is_object_array(path):
        return load_npy_labels(path, clip_lengths)
    return match_clip_labels(load_labels_file(path), clip_names, path)


def match_clip_labels(
    labels_by_key: Mapping[str, np.ndarray],
    clip_names: Sequence[str],
    source: str | os.PathLike[str],
) -> list[np.ndarray]:
    """Pick the labels of each clip from a mapping keyed by clip name.

    A key matches a clip when it equals the clip name, or when both reduce to the
    same key after lowercasing, dropping a ``_gt``/``_label``/``_labels``/``_mask``
    suffix and, for names of the form ``<letters><number>``, keeping only the
    number. So ``Test001_gt``, ``1_label`` and ``001`` all match clip ``01``.
    Unused keys are logged as a warning.

    Raises
    ------
    LabelError
        If a clip has no matching key or several keys match it.
    """
    normalized: dict[str, list[str]] = {}
    for key in labels_by_key:
        normalized.setdefault(normalize_clip_key(key), []).append(key)

    selected = []
    used = set()
    for name in clip_names:
        if name in labels_by_key:
            key = name
        else:
            candidates = normalized.get(normalize_clip_key(name), [])
            if len(candidates) != 1:
                _raise_unmatched(name, candidates, labels_by_key, source)
            key = candidates[0]
        used.add(key)
        selected.append(labels_by_key[key])

    unused = [key for key in labels_by_key if key not in used]
    if unused:
        logger.warning(
            "%d label entries in %s match no test clip and are ignored: %s",
            len(unused),
            source,
            ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else ""),
        )
    return selected


def normalize_clip_key(name: str) -> str:
    """Reduce a clip name or label key to the form ``match_clip_labels`` compares."""
    key = name.lower()
    for suffix in _LABEL_KEY_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    match = _NUMBERED_KEY.match(key)
    if match is not None:
        return str(int(match.group("number")))
    return key


def _raise_unmatched(
    name: str,
    candidates: list[str],
    labels_by_key: Mapping[str, np.ndarray],
    source: str | os.PathLike[str],
) -> None:
    if candidates:
        raise LabelError(
            f"Test clip {name!r} matches several entries in {source}: {candidates}. "
            "Rename the entries so that each clip has one."
        )
    keys = list(labels_by_key)
    listed_keys = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
    raise LabelError(
        f"No labels for test clip {name!r} in {source} (entries: {listed_keys}). "
        "Add an entry named after the clip."
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise LabelError(f"Cannot read labels file {path}: {error}") from error


def _load_npy(path: Path) -> np.ndarray:
    _check_magic(path, b"\x93NUMPY", ".npy file", "numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise LabelError(
            f"Cannot read {path} as a numeric .npy array: {error}"
        ) from error


def _npy_is_object_array(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            # Format 3.0 differs from 2.0 only in allowing UTF-8 field names.
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except (OSError, ValueError) as error:
        raise LabelError(f"Cannot read {path} as a .npy file: {error}") from error
    return dtype.hasobject


def _check_magic(path: Path, magic: bytes, kind: str, writer: str) -> None:
    """Raise LabelError if ``path`` does not start with ``magic``.

    np.load reads any other file as a pickle, so its error would suggest
    allow_pickle for what is only a file of the wrong type.
    """
    try:
        with path.open("rb") as handle:
            start = handle.read(len(magic))
    except FileNotFoundError:
        raise
    except OSError as error:
        raise LabelError(f"Cannot read labels file {path}: {error}") from error
    if start != magic:
        raise LabelError(
            f"{path} is not a {kind} (its first bytes are {start!r}); write the "
            f"labels with {writer}."
        )


def _open_npz(path: Path):
    _check_magic(path, b"PK", ".npz archive", "numpy.savez(path, **{clip: labels})")
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise LabelError(f"Cannot read {path} as an .npz archive: {error}") from error


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    """Read one array of an open .npz, naming the file and array on failure.

    Arrays of Python objects fail here, since np.load runs without pickle.
    """
    try:
        return archive[key]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise LabelError(
            f"Cannot read array {key!r} of {path}: {error}. Labels must be numeric "
            "arrays; arrays of Python objects are not read, because loading them "
            "would run code from the file."
        ) from error


def _as_label_vector(array: np.ndarray, description: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.names is not None:
        raise LabelError(
            f"{description} is a record array with fields {array.dtype.names}; "
            "expected a plain array of 0 and 1."
        )
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise LabelError(
            f"{description} has shape {array.shape}, expected frame labels of shape "
            "(N,) or (1, N)."
        )
    if array.dtype == object or not np.isin(array, (0, 1)).all():
        values = np.unique(array)[:10] if array.dtype != object else "objects"
        raise LabelError(
            f"{description} must contain only 0 and 1, found values {values}."
        )
    return array.astype(np.int8)


def _load_npz_labels(path: Path) -> dict[str, np.ndarray]:
    labels = {}
    with _open_npz(path) as archive:
        for key in sorted(archive.files, key=natural_sort_key):
            array = _npz_array(archive, key, path)
            if array.ndim == 3:
                labels[key] = labels_from_masks(array)
            else:
                labels[key] = _as_label_vector(array, f"Array {key!r} in {path}")
    return labels


def _load_npy_dict(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    if not _npy_is_object_array(path):
        raise LabelError(
            f"{path} contains one numeric array, not one array per clip. Pass the clip "
            "lengths to load_npy_labels to split it, or save per-clip arrays with "
            "numpy.savez(path, **{clip_name: labels})."
        )
    if not allow_pickle:
        raise LabelError(
            f"{path} contains pickled Python objects, which are not loaded by default "
            "because unpickling can run code. Save the labels with "
            "numpy.savez(path, **{clip_name: labels}), or pass allow_pickle=True "
            "for a trusted file."
        )
    contents = np.load(path, allow_pickle=True)
    if contents.shape == () and isinstance(contents.item(), dict):
        contents = contents.item()
    else:
        raise LabelError(
            f"{path} contains a pickled {type(contents.item()).__name__}, expected a "
            "dict that maps clip names to label arrays."
        )
    return {
        str(key): _as_label_vector(value, f"Entry {key!r} in {path}")
        for key, value in sorted(
            contents.items(), key=lambda item: natural_sort_key(str(item[0]))
        )
    }


def _read_csv_text(path: Path) -> str:
    """Read a CSV labels file as UTF-8 text, without a leading byte order mark."""
    data = path.read_bytes()
    try:
        # Some spreadsheet programs start a UTF-8 CSV file with a byte order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # error.object is the input after the byte order mark, if there was one.
        line_number = error.object[: error.start].count(b"\n") + 1
        bad_bytes = error.object[error.start : error.end]
        raise LabelError(
            f"{path}, line {line_number}: invalid UTF-8 bytes {bad_bytes!r}. Save "
            "the file as UTF-8."
        ) from error


def _load_csv_labels(path: Path) -> dict[str, np.ndarray]:
    frames_by_clip: dict[str, dict[int, int]] = {}
    with io.StringIO(_read_csv_text(path), newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) != 3:
                raise LabelError(
                    f"{path}, line {line_number}: expected 3 columns clip,frame,label "
                    f"but found {len(cells)}."
                )
            clip, frame_text, label_text = cells
            if not frame_text.lstrip("-").isdigit():
                if [cell.lower() for cell in cells] == ["clip", "frame", "label"]:
                    continue
                raise LabelError(
                    f"{path}, line {line_number}: frame {frame_text!r} is not an "
                    "integer."
                )
            if label_text not in ("0", "1"):
                raise LabelError(
                    f"{path}, line {line_number}: label {label_text!r} must be 0 or 1."
                )
            frames = frames_by_clip.setdefault(clip, {})
            frame = int(frame_text)
            if frame in frames:
                raise LabelError(
                    f"{path}, line {line_number}: frame {frame} of clip {clip!r} is "
                    "listed twice."
                )
            frames[frame] = int(label_text)

    if not frames_by_clip:
        raise LabelError(f"{path} contains no clip,frame,label rows.")
    first_frame = min(min(frames) for frames in frames_by_clip.values())
    if first_frame not in (0, 1):
        raise LabelError(
            f"{path}: the smallest frame number is {first_frame}, but frame numbers "
            "must start at 0 or 1."
        )

    labels = {}
    for clip in sorted(frames_by_clip, key=natural_sort_key):
        frames = frames_by_clip[clip]
        expected = range(first_frame, first_frame + len(frames))
        missing = sorted(set(expected) - set(frames))
        if missing:
            raise LabelError(
                f"{path}: clip {clip!r} has no row for frame {missing[0]}. Every "
                f"frame from {first_frame} to its last frame needs a label."
            )
        labels[clip] = np.array([frames[frame] for frame in expected], dtype=np.int8)
    return labels
