"""Discovery of the train and test clips of public video anomaly datasets.

``load_dataset`` finds the clip folders or video files of a dataset copy on disk,
loads the frame-level ground truth of every test clip and checks that each test
clip has exactly one label per frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mulde.video.clips import Clip, VideoDataset
from mulde.video.labels import (
    LabelError,
    load_clip_labels,
    load_mask_folder_labels,
    natural_sort_key,
)
from mulde.video.readers import (
    VideoReadError,
    count_frames,
    first_frame,
    is_video_file,
)

DATASETS = ("ped1", "ped2", "avenue", "shanghaitech", "generic")

_UCSD_FOLDERS = {"ped1": "UCSDped1", "ped2": "UCSDped2"}

_EXPECTED_LAYOUTS = {
    "ped1": (
        "the UCSD layout UCSDped1/Train/Train001/001.tif, UCSDped1/Test/Test001/ and "
        "UCSDped1.m, or the frames layout training/frames/01/000.jpg and "
        "testing/frames/01/"
    ),
    "ped2": (
        "the UCSD layout UCSDped2/Train/Train001/001.tif, UCSDped2/Test/Test001/ and "
        "UCSDped2.m, or the frames layout training/frames/01/000.jpg and "
        "testing/frames/01/"
    ),
    "avenue": (
        "training_videos/01.avi, testing_videos/01.avi and "
        "ground_truth_demo/testing_label_mask/1_label.mat, or training_frames/01/ "
        "and testing_frames/01/ in place of the video folders"
    ),
    "shanghaitech": (
        "training/videos/01_001.avi, testing/frames/01_0014/ and "
        "testing/test_frame_mask/01_0014.npy"
    ),
    "generic": "train_dir and test_dir folders of clips and a labels file",
}


@dataclass(frozen=True)
class _Layout:
    """Folders of one dataset copy. ``labels`` is None until ground truth is found."""

    root: Path
    train_dir: Path
    test_dir: Path
    labels: Path | None = None


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    train_dir: str | os.PathLike[str] | None = None,
    test_dir: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
) -> VideoDataset:
    """Load the clips and test labels of a dataset stored under ``root``.

    Parameters
    ----------
    name : str
        One of ``DATASETS``, case-insensitive.
    root : path-like
        Folder of the dataset copy. For ``ped1``/``ped2`` it may also be the
        folder that contains ``UCSDped1``/``UCSDped2``.
    train_dir, test_dir : path-like, optional
        Folders of training and test clips, each clip a subfolder of frame images
        or a video file. They replace the folders that the named layout expects,
        and ``generic`` requires both. Relative paths are resolved against
        ``root``.
    labels : path-like, optional
        Ground-truth source that replaces the one the layout expects, and
        ``generic`` requires it. Accepted: a UCSD ``.m`` file, a ``.npy`` of
        concatenated labels, or any source that ``labels.load_labels_file``
        reads. Relative paths are resolved against ``root``.

    Returns
    -------
    VideoDataset
        Training clips without labels and test clips with int8 frame labels,
        both sorted by clip name with numbers in natural order.

    Raises
    ------
    ValueError
        If ``name`` is unknown, or ``generic`` is missing an argument.
    FileNotFoundError
        If ``root``, a clip folder or the ground truth is missing.
    VideoReadError
        If a clip folder has no clips or a clip has no frames.
    LabelError
        If the ground truth is malformed, misses a test clip, or has a different
        number of frames than a test clip.
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}."
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        from mulde.video.archive import DATASET_SOURCES  # archive imports us

        hint = (
            f" `mulde data {key}` says where to get it and unpacks it."
            if key in DATASET_SOURCES
            else ""
        )
        raise FileNotFoundError(
            f"Dataset root not found: {root} (absolute: {root.absolute()}). "
            f"Expected a folder with {_EXPECTED_LAYOUTS[key]}.{hint}"
        )

    layout = _resolve_layout(key, root, train_dir, test_dir, labels)
    train = discover_clips(layout.train_dir)
    test_clips = discover_clips(layout.test_dir)
    for split, clips in (("training", train), ("test", test_clips)):
        for clip in clips:
            check_has_frames(clip, split)
    test = _label_test_clips(key, layout, test_clips)
    return VideoDataset(name=key, root=layout.root, train=train, test=test)


def check_has_frames(clip: Clip, split: str) -> None:
    """Raise VideoReadError if a clip has no frames, before any work is done.

    Counting is cheap for frame folders and raises for an empty one. For video
    files only the first frame is decoded: counting could decode the whole file.
    """
    if clip.source.is_dir():
        count_frames(clip.source)
        return
    if first_frame(clip.source) is None:
        raise VideoReadError(
            f"The {split} video {clip.source} contains no frames; re-export it or "
            "remove it from the folder."
        )


def locate_dataset_root(
    name: str, folder: str | os.PathLike[str], max_depth: int = 3
) -> Path | None:
    """Find the folder under ``folder`` that ``load_dataset(name, ...)`` accepts.

    Searches ``folder`` and its subfolders breadth-first, at most ``max_depth``
    levels down, and returns the dataset root of the first match. Only the clip
    folders are checked, not the ground truth. Returns None when nothing matches.
    """
    key = name.lower()
    if key not in _EXPECTED_LAYOUTS or key == "generic":
        raise ValueError(
            f"Cannot locate a {name!r} dataset. Known layouts: "
            f"{', '.join(d for d in DATASETS if d != 'generic')}."
        )
    level = [Path(folder)]
    for _ in range(max_depth + 1):
        next_level = []
        for candidate in level:
            layout = _find_layout(key, candidate)
            if layout is not None:
                return layout.root
            next_level.extend(
                sorted(
                    path
                    for path in candidate.iterdir()
                    if path.is_dir() and not path.name.startswith(".")
                )
            )
        level = next_level
    return None


def discover_clips(
    folder: str | os.PathLike[str],
    empty_hint: str = "Check that the dataset was extracted completely.",
) -> list[Clip]:
    """List the clips of a split folder, sorted by name in natural order.

    A clip is a subfolder (of frame images) or a video file with a supported
    extension. Hidden entries, other files and subfolders ending in ``_gt``
    (UCSD pixel masks) are skipped. A folder clip is named after the folder and a
    video clip after its file stem. ``empty_hint`` ends the error raised for a
    folder without clips with the next step to take.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    VideoReadError
        If ``folder`` contains no clips or two clips have the same name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Clip folder not found: {folder}")

    clips = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.name.endswith("_gt"):
            clips.append(Clip(name=entry.name, source=entry))
        elif entry.is_file() and is_video_file(entry):
            clips.append(Clip(name=entry.stem, source=entry))
    if not clips:
        raise VideoReadError(
            f"No clips in {folder}: expected subfolders of frame images or video "
            f"files. {empty_hint}"
        )

    clips.sort(key=lambda clip: (natural_sort_key(clip.name), clip.source.name))
    for previous, current in zip(clips, clips[1:], strict=False):
        if previous.name == current.name:
            raise VideoReadError(
                f"Two clips in {folder} are named {current.name!r}: "
                f"{previous.source.name} and {current.source.name}. Keep one of them."
            )
    return clips


def _resolve_layout(
    name: str,
    root: Path,
    train_dir: str | os.PathLike[str] | None,
    test_dir: str | os.PathLike[str] | None,
    labels: str | os.PathLike[str] | None,
) -> _Layout:
    if name == "generic":
        missing = [
            argument
            for argument, value in (
                ("--train-dir (train_dir)", train_dir),
                ("--test-dir (test_dir)", test_dir),
                ("--labels (labels)", labels),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"The generic dataset requires {', '.join(missing)}: "
                f"{_EXPECTED_LAYOUTS['generic']}."
            )
        found = None
    else:
        found = _find_layout(name, root)
        if found is None and (train_dir is None or test_dir is None):
            raise FileNotFoundError(
                f"No {name} dataset found at {root}. Expected "
                f"{_EXPECTED_LAYOUTS[name]}. Pass the folder that contains it, or "
                "pass train_dir and test_dir for another layout."
            )

    base = found.root if found is not None else root
    layout = _Layout(
        root=base,
        train_dir=root / train_dir if train_dir is not None else found.train_dir,
        test_dir=root / test_dir if test_dir is not None else found.test_dir,
        labels=root / labels if labels is not None else None,
    )
    for argument, path in (
        ("--train-dir (train_dir)", layout.train_dir),
        ("--test-dir (test_dir)", layout.test_dir),
    ):
        if not path.is_dir():
            raise FileNotFoundError(
                f"{argument} not found: {path}. Expected a folder of clips (frame "
                "subfolders or video files)."
            )
    if layout.labels is not None and not layout.labels.exists():
        raise FileNotFoundError(f"Labels file not found: {layout.labels}")
    return layout


def _find_layout(name: str, root: Path) -> _Layout | None:
    if name in _UCSD_FOLDERS:
        return _find_ucsd_layout(name, root)
    if name == "avenue":
        return _find_avenue_layout(root)
    if name == "shanghaitech":
        return _find_shanghaitech_layout(root)
    return None


def _find_ucsd_layout(name: str, root: Path) -> _Layout | None:
    folder = _UCSD_FOLDERS[name]
    (other,) = (key for key in _UCSD_FOLDERS if key != name)
    other_folder = _UCSD_FOLDERS[other]
    named_other = root.name.lower() in (other, other_folder.lower())
    other_m_file = (root / f"{other_folder}.m").is_file() and not (
        root / f"{folder}.m"
    ).is_file()
    if named_other or other_m_file:
        raise ValueError(
            f"{root} looks like UCSD {other_folder[4:].capitalize()} "
            f"({'its name' if named_other else f'it holds {other_folder}.m'}), "
            f"not {folder[4:].capitalize()}; use the dataset name {other}, or point "
            f"at a {folder} copy."
        )
    for base in (root / folder, root):
        if (base / "Train").is_dir() and (base / "Test").is_dir():
            return _Layout(base, base / "Train", base / "Test")
    for base in (root, root / name):
        if (base / "training" / "frames").is_dir() and (
            base / "testing" / "frames"
        ).is_dir():
            return _Layout(
                base, base / "training" / "frames", base / "testing" / "frames"
            )
    return None


def _find_avenue_layout(root: Path) -> _Layout | None:
    for base in (
        root,
        root / "Avenue Dataset",
        root / "Avenue_Dataset",
        root / "avenue",
    ):
        train_dir = _first_dir(
            base, ("training_videos", "training_frames", "training/frames")
        )
        test_dir = _first_dir(
            base, ("testing_videos", "testing_frames", "testing/frames")
        )
        if train_dir is not None and test_dir is not None:
            return _Layout(base, train_dir, test_dir)
    return None


def _find_shanghaitech_layout(root: Path) -> _Layout | None:
    for base in (root, root / "shanghaitech", root / "ShanghaiTech"):
        train_dir = _first_dir(base, ("training/videos", "training/frames"))
        test_dir = _first_dir(base, ("testing/frames", "testing/videos"))
        if train_dir is not None and test_dir is not None:
            return _Layout(base, train_dir, test_dir)
    return None


def _first_dir(base: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None


def _label_candidates(name: str, layout: _Layout) -> list[Path]:
    """List where to look for ground truth, most authoritative first."""
    base = layout.root
    if name in _UCSD_FOLDERS:
        folder = _UCSD_FOLDERS[name]
        return [
            base / f"{folder}.m",
            base / "Test" / f"{folder}.m",
            base / f"frame_labels_{name}.npy",
            base / "pixel_masks.npz",
        ]
    if name == "avenue":
        return [
            base / "ground_truth_demo" / "testing_label_mask",
            base / "testing_label_mask",
            base / "testing_gt" / "testing_label_mask",
            base / "testing_gt",
            # The ground truth is a separate download, often unpacked next to the
            # "Avenue Dataset" folder.
            base.parent / "ground_truth_demo" / "testing_label_mask",
            base / "frame_labels_avenue.npy",
        ]
    if name == "shanghaitech":
        return [
            base / "testing" / "test_frame_mask",
            base / "frame_labels_shanghaitech.npy",
        ]
    return []


def _has_label_files(path: Path) -> bool:
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    return any(path.glob("*.mat")) or any(path.glob("*.npy"))


def _label_test_clips(name: str, layout: _Layout, test: list[Clip]) -> list[Clip]:
    lengths = [count_frames(clip.source) for clip in test]
    names = [clip.name for clip in test]

    source = layout.labels
    if source is None:
        source = next(
            (
                path
                for path in _label_candidates(name, layout)
                if _has_label_files(path)
            ),
            None,
        )
    if source is not None:
        labels = load_clip_labels(source, names, lengths)
    elif name in _UCSD_FOLDERS and all(
        (layout.test_dir / f"{clip}_gt").is_dir() for clip in names
    ):
        source = layout.test_dir / "<clip>_gt"
        labels = [
            load_mask_folder_labels(layout.test_dir / f"{clip}_gt") for clip in names
        ]
    else:
        searched = ", ".join(str(path) for path in _label_candidates(name, layout))
        raise FileNotFoundError(
            f"No ground truth found for the {name} test clips in {layout.root}. "
            f"Searched {searched}. Give the labels file with --labels PATH "
            "(labels=PATH in Python)."
        )

    labelled = []
    for clip, clip_labels, length in zip(test, labels, lengths, strict=True):
        if clip_labels.shape != (length,):
            raise LabelError(
                f"Labels for test clip {clip.name!r} from {source} have "
                f"{clip_labels.size} frames but {clip.source} has {length} frames. "
                "Use the labels that belong to this copy of the dataset."
            )
        labelled.append(
            Clip(name=clip.name, source=clip.source, labels=clip_labels.astype(np.int8))
        )
    return labelled
