"""Download sources of the public datasets and safe unpacking of their archives.

Nothing here downloads: the datasets have no open license, so users fetch the
archives from the official pages themselves and pass them to ``unpack_archive``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from mulde.video.datasets import locate_dataset_root

_UCSD_PAGE = "http://www.svcl.ucsd.edu/projects/anomaly/dataset.htm"
_UCSD_CITATION = (
    "V. Mahadevan, W. Li, V. Bhalodia, N. Vasconcelos, "
    '"Anomaly Detection in Crowded Scenes", CVPR 2010'
)

# "archive" is the file name that the download page serves, and "root" is the
# dataset folder inside it, relative to the folder the archive is unpacked into.
DATASET_SOURCES: dict[str, dict] = {
    "ped1": {
        "title": "UCSD Anomaly Detection Dataset, Ped1",
        "page": _UCSD_PAGE,
        "archive": "UCSD_Anomaly_Dataset.tar.gz",
        "root": "UCSD_Anomaly_Dataset.v1p2/UCSDped1",
        "citation": _UCSD_CITATION,
        "notes": "One archive contains both Ped1 and Ped2.",
    },
    "ped2": {
        "title": "UCSD Anomaly Detection Dataset, Ped2",
        "page": _UCSD_PAGE,
        "archive": "UCSD_Anomaly_Dataset.tar.gz",
        "root": "UCSD_Anomaly_Dataset.v1p2/UCSDped2",
        "citation": _UCSD_CITATION,
        "notes": "One archive contains both Ped1 and Ped2.",
    },
    "avenue": {
        "title": "CUHK Avenue Dataset",
        "page": "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/dataset.html",
        "archive": "Avenue_Dataset.zip",
        "root": "Avenue Dataset",
        "citation": (
            'C. Lu, J. Shi, J. Jia, "Abnormal Event Detection at 150 FPS in MATLAB", '
            "ICCV 2013"
        ),
        "notes": (
            "The frame ground truth (testing_label_mask/N_label.mat) is a separate "
            "download on the same page. Unpack it into the dataset folder or next "
            "to it, so that ground_truth_demo/testing_label_mask/ is found."
        ),
    },
    "shanghaitech": {
        "title": "ShanghaiTech Campus Dataset",
        "page": "https://svip-lab.github.io/dataset/campus_dataset.html",
        "archive": "shanghaitech.tar.gz",
        "root": "shanghaitech",
        "citation": (
            'W. Luo, W. Liu, S. Gao, "A Revisit of Sparse Coding Based Anomaly '
            'Detection in Stacked RNN Framework", ICCV 2017'
        ),
        # NOTE: the page links to external file hosts, so the archive name may
        # differ. unpack_archive finds the dataset root by its layout, not by name.
        "notes": "The page links to the archive on external file hosts.",
    },
}

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Folder levels below the archive's top that are searched for the dataset root.
_ROOT_SEARCH_DEPTH = 4
_LINK_KINDS = ("symlink", "hardlink")


def describe_sources(name: str) -> str:
    """Return instructions for obtaining dataset ``name`` by hand.

    Raises
    ------
    ValueError
        If ``name`` is not a key of ``DATASET_SOURCES``.
    """
    source = _source(name)
    return "\n".join(
        [
            f"{source['title']}",
            f"  Download page: {source['page']}",
            f"  Expected archive: {source['archive']}",
            f"  Dataset folder inside it: {source['root']}",
            f"  {source['notes']}",
            f"  Unpack it with: mulde data {name.lower()} --unpack ARCHIVE --dest "
            "FOLDER, then pass the printed folder to mulde run --root. A copy in the "
            "frames layout (training/frames/01/, testing/frames/01/) works as well.",
            "  The dataset has no open license: use it for research and cite "
            f"{source['citation']}.",
        ]
    )


def unpack_archive(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], dataset: str
) -> Path:
    """Extract a dataset archive into ``dest`` and return the dataset root.

    Accepts ``.tar.gz``, ``.tgz``, ``.tar`` and ``.zip`` files, recognised by
    their content, so a zip named ``.tar.gz`` is read as a zip. Members with
    absolute paths or ``..`` components, symlinks or hard links that resolve
    outside the archive, and device or FIFO members are rejected before anything
    is moved into ``dest``. So are two files or links with the same name, and a file or
    link whose path another member needs as a folder. These checks, except the
    one that resolves chains of symlinks, run before any file is extracted.

    The archive is first extracted into a temporary folder next to ``dest``, and
    the dataset folder is looked for there, so an archive without the dataset
    leaves ``dest`` unchanged. If ``dest`` does not exist, the temporary folder
    is renamed to ``dest``. Otherwise each top-level entry is renamed into
    ``dest``, and an entry that already exists there is an error, raised before
    anything is moved. An interrupted or failed
    extraction deletes the temporary folder, except when the process is killed
    outright, which leaves a hidden ``.<dest>.partial-*`` folder next to ``dest``.

    Returns
    -------
    Path
        The folder inside ``dest`` that ``load_dataset(dataset, ...)`` accepts,
        for example ``dest/UCSD_Anomaly_Dataset.v1p2/UCSDped2``.

    Raises
    ------
    FileNotFoundError
        If ``archive`` does not exist.
    ValueError
        If the archive format is unsupported, a member is unsafe, two members
        collide, a zip symlink target is not UTF-8, an entry already exists in
        ``dest``, or the extracted files do not contain the dataset.
    """
    source_name = dataset.lower()
    _source(source_name)
    archive = Path(archive)
    dest = Path(dest)
    if archive.is_dir():
        raise ValueError(
            f"{archive} is a folder, not an archive. Pass the downloaded .zip or "
            f".tar.gz file, or give the folder to `mulde run --root` if it already "
            "holds the unpacked dataset."
        )
    if not archive.is_file():
        raise FileNotFoundError(f"Archive not found: {archive}")
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"Destination {dest} exists and is not a folder.")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent)
        )
    except OSError as error:
        raise ValueError(
            f"Cannot unpack into {dest}: writing in {dest.parent} failed "
            f"({error.strerror}). Choose a writable --dest."
        ) from error
    # mkdtemp creates the folder with mode 0o700; a renamed dest keeps that mode.
    staging.chmod(0o755)
    try:
        _extract(archive, staging)
        # Only the extracted entries are searched, so data already in dest is
        # never taken for the dataset, and a wrong archive leaves dest unchanged.
        try:
            root = locate_dataset_root(
                source_name, staging, max_depth=_ROOT_SEARCH_DEPTH
            )
        except ValueError as error:
            # The temporary folder is gone when the user reads the message.
            message = str(error).replace(str(staging), str(dest))
            raise ValueError(f"Nothing was unpacked into {dest}: {message}") from None
        if root is None:
            raise ValueError(
                f"Nothing was unpacked into {dest}: found no {source_name} dataset "
                f"folder in {archive} (expected "
                f"{DATASET_SOURCES[source_name]['root']}). Check that this is the "
                f"right archive.\n{describe_sources(source_name)}"
            )
        _move_into_place(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest / root.relative_to(staging)


def check_unpacked(dataset: str, root: Path) -> str | None:
    """Return why ``mulde run`` cannot use an unpacked dataset yet, or None.

    Loads the dataset at ``root`` as ``mulde run`` does, labels included, and
    checks that every clip has a frame. An archive may hold the clips without
    the labels, which some datasets ship in a second archive.
    """
    from mulde.video.datasets import check_has_frames, load_dataset

    try:
        loaded = load_dataset(dataset, root)
        for split, clips in (("training", loaded.train), ("test", loaded.test)):
            for clip in clips:
                check_has_frames(clip, split)
    except (OSError, ValueError) as error:
        return str(error)
    return None


def _source(name: str) -> dict:
    key = name.lower()
    if key not in DATASET_SOURCES:
        raise ValueError(
            f"No download source for dataset {name!r}. Known datasets: "
            f"{', '.join(DATASET_SOURCES)}."
        )
    return DATASET_SOURCES[key]


@dataclass(frozen=True)
class _Member:
    """One archive entry, reduced to what extraction needs."""

    name: str  # as stored in the archive, for error messages
    parts: tuple[str, ...]
    kind: str  # "dir", "file", "symlink" or "hardlink"
    link_target: str = ""


_KIND_NAMES = {
    "dir": "folder",
    "file": "file",
    "symlink": "symbolic link",
    "hardlink": "hard link",
}
_DAMAGED_HINT = (
    "The archive looks damaged or hand-made, so download it again or rebuild it."
)


def _extract(archive: Path, staging: Path) -> None:
    archive_format = _archive_format(archive)
    if archive_format == "zip":
        _extract_zip(archive, staging)
    elif archive_format == "tar":
        _extract_tar(archive, staging)
    else:
        raise ValueError(
            f"Unsupported archive {archive}: expected a zip or tar file, or a file "
            f"ending in {', '.join(_ARCHIVE_SUFFIXES)}."
        )


def _archive_format(archive: Path) -> str | None:
    """Return ``"zip"`` or ``"tar"`` by content, else by name, else None.

    The content decides first, so a zip saved under a ``.tar.gz`` name is still
    read as a zip. The name decides when the content is neither, so a truncated
    archive reaches the reader that reports it as damaged.
    """
    name = archive.name.lower()
    named = (
        "zip"
        if name.endswith(".zip")
        else "tar"
        if name.endswith(_TAR_SUFFIXES)
        else None
    )
    # zipfile looks for its end record in the last 64 KiB, which can be the record
    # of a zip stored inside a tar, so a name's claim is confirmed first.
    for candidate in (named, "zip", "tar"):
        if candidate is not None and _has_format(archive, candidate):
            return candidate
    return named


def _has_format(archive: Path, archive_format: str) -> bool:
    try:
        if archive_format == "zip":
            return zipfile.is_zipfile(archive)
        return tarfile.is_tarfile(archive)
    except (OSError, EOFError, zlib.error):
        return False


def _safe_parts(name: str, archive: Path) -> tuple[str, ...]:
    # Backslashes count as separators so that Windows-made zips cannot hide "..".
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise ValueError(
            f"Unsafe member {name!r} in {archive}: absolute paths are rejected."
        )
    if ".." in path.parts:
        raise ValueError(
            f"Unsafe member {name!r} in {archive}: '..' components are rejected."
        )
    return tuple(part for part in path.parts if part not in ("", "."))


def _check_link_target(member: _Member, archive: Path) -> None:
    """Reject a link whose target, taken lexically, leaves the archive root."""
    target = member.link_target.replace("\\", "/")
    member_name = "/".join(member.parts)
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise ValueError(
            f"Unsafe link {member_name!r} -> {target!r} in {archive}: absolute "
            "targets are rejected."
        )
    # Symlink targets are relative to the link's folder, hard link targets to the
    # archive root.
    parts = list(member.parts[:-1]) if member.kind == "symlink" else []
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not parts:
                raise ValueError(
                    f"Unsafe link {member_name!r} -> {target!r} in {archive}: the "
                    "target points outside the archive."
                )
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)


def _check_members(members: list[_Member], archive: Path) -> None:
    """Reject duplicate names, file and folder collisions and unsafe link targets.

    Runs before any file is written, so a rejected archive extracts nothing.
    """
    _check_duplicates(members, archive)
    _check_folder_collisions(members, archive)
    for member in members:
        if member.kind in _LINK_KINDS:
            _check_link_target(member, archive)


def _check_duplicates(members: list[_Member], archive: Path) -> None:
    by_parts: dict[tuple[str, ...], list[_Member]] = {}
    for member in members:
        by_parts.setdefault(member.parts, []).append(member)

    # A folder listed twice loses nothing. Any other repeated name would make the
    # last copy silently replace the earlier ones, or make extraction fail.
    duplicates = [
        group
        for group in by_parts.values()
        if len(group) > 1 and any(member.kind != "dir" for member in group)
    ]
    if not duplicates:
        return
    listed = ", ".join(
        f"{group[0].name!r} ({len(group)} members)" for group in duplicates[:10]
    )
    if len(duplicates) > 10:
        listed += f" and {len(duplicates) - 10} more names"
    raise ValueError(
        f"Invalid archive {archive}: several members have the same name: {listed}. "
        f"{_DAMAGED_HINT}"
    )


def _check_folder_collisions(members: list[_Member], archive: Path) -> None:
    """Reject a file or link whose path another member needs as a folder."""
    # Each folder path that the members need, mapped to the first member inside it.
    first_inside: dict[tuple[str, ...], _Member] = {}
    for member in members:
        for end in range(1, len(member.parts)):
            first_inside.setdefault(member.parts[:end], member)

    for member in members:
        inside = first_inside.get(member.parts)
        if member.kind != "dir" and inside is not None:
            raise ValueError(
                f"Invalid member {inside.name!r} in {archive}: it needs "
                f"{member.name!r} to be a folder, but the archive contains "
                f"{member.name!r} as a {_KIND_NAMES[member.kind]}. {_DAMAGED_HINT}"
            )


@contextmanager
def _collision_errors(member: _Member, archive: Path) -> Iterator[None]:
    """Convert a path collision while extracting ``member`` into a ValueError.

    ``_check_members`` compares names exactly, so it misses names that only a
    case-insensitive or Unicode-normalizing file system treats as equal. On such a
    file system the second member fails here with one of these errors.
    """
    try:
        yield
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as error:
        raise ValueError(
            f"Cannot extract member {member.name!r} from {archive}: another member "
            f"already uses its path ({error.strerror}). {_DAMAGED_HINT}"
        ) from error


def _write_member(
    member: _Member,
    open_content: Callable[[], IO[bytes]],
    staging: Path,
    archive: Path,
) -> None:
    """Create a folder member, or copy a file member's content from ``open_content``."""
    target = staging.joinpath(*member.parts)
    with _collision_errors(member, archive):
        if member.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # Mode "xb" fails on an existing path instead of overwriting it.
        with open_content() as stream, target.open("xb") as out:
            shutil.copyfileobj(stream, out)


def _iter_tar_members(
    tar: tarfile.TarFile, archive: Path
) -> Iterator[tuple[_Member, tarfile.TarInfo]]:
    for info in tar:
        parts = _safe_parts(info.name, archive)
        if not parts:
            continue
        if info.isdir():
            yield _Member(info.name, parts, "dir"), info
        elif info.isfile():
            yield _Member(info.name, parts, "file"), info
        elif info.issym():
            yield _Member(info.name, parts, "symlink", info.linkname), info
        elif info.islnk():
            yield _Member(info.name, parts, "hardlink", info.linkname), info
        else:
            raise ValueError(
                f"Unsafe member {info.name!r} in {archive}: device, FIFO and other "
                "special files are rejected."
            )


def _extract_tar(archive: Path, staging: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            # Listing a compressed tar decompresses all of it once more, which is
            # the price of checking every member before any file is written.
            members = list(_iter_tar_members(tar, archive))
            _check_members([member for member, _ in members], archive)
            for member, info in members:
                if member.kind in ("dir", "file"):
                    _write_member(
                        member, partial(tar.extractfile, info), staging, archive
                    )
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as error:
        raise ValueError(
            f"Cannot read tar archive {archive}: {error}. The archive is truncated "
            "or corrupt, so download it again."
        ) from error
    links = [member for member, _ in members if member.kind in _LINK_KINDS]
    _create_links(links, staging, archive)


def _extract_zip(archive: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = _list_zip_members(zip_file, archive)
            _check_members([member for member, _ in members], archive)
            for member, info in members:
                if member.kind in ("dir", "file"):
                    _write_member(
                        member, partial(zip_file.open, info), staging, archive
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ValueError(
            f"Cannot read zip archive {archive}: {error}. The archive is truncated "
            "or corrupt, so download it again."
        ) from error
    links = [member for member, _ in members if member.kind in _LINK_KINDS]
    _create_links(links, staging, archive)


def _list_zip_members(
    zip_file: zipfile.ZipFile, archive: Path
) -> list[tuple[_Member, zipfile.ZipInfo]]:
    members = []
    for info in zip_file.infolist():
        parts = _safe_parts(info.filename, archive)
        if not parts:
            continue
        mode = info.external_attr >> 16
        if info.is_dir():
            member = _Member(info.filename, parts, "dir")
        elif stat.S_ISLNK(mode):
            link_target = _read_zip_link_target(zip_file, info, archive)
            member = _Member(info.filename, parts, "symlink", link_target)
        else:
            member = _Member(info.filename, parts, "file")
        members.append((member, info))
    return members


def _read_zip_link_target(
    zip_file: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path
) -> str:
    # Zip stores a symlink as a member whose content is the target.
    content = zip_file.read(info)
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Invalid symbolic link {info.filename!r} in {archive}: its target "
            f"{content[:100]!r} is not valid UTF-8. {_DAMAGED_HINT}"
        ) from error


def _create_links(links: list[_Member], staging: Path, archive: Path) -> None:
    """Create links after all files, so no file is ever written through a link.

    Hard links come first, while the staging folder contains no symlinks yet, so a
    hard link target cannot be reached through a symlink that leaves it.
    """
    for member in sorted(links, key=lambda link: link.kind != "hardlink"):
        target = staging.joinpath(*member.parts)
        with _collision_errors(member, archive):
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.kind == "hardlink":
                # A hard link must point at a regular file extracted from the
                # archive.
                linked = staging.joinpath(*_safe_parts(member.link_target, archive))
                if linked.is_symlink() or not linked.is_file():
                    raise ValueError(
                        f"Unsafe hard link {'/'.join(member.parts)!r} in {archive}: "
                        f"target {member.link_target!r} is not a file in the archive."
                    )
                os.link(linked, target)
            else:
                os.symlink(member.link_target, target)

    # A lexically safe target can still escape through a chain of symlinks, so
    # every link is resolved again once all of them exist.
    real_staging = staging.resolve()
    for member in links:
        resolved = staging.joinpath(*member.parts).resolve()
        if not resolved.is_relative_to(real_staging):
            raise ValueError(
                f"Unsafe link {'/'.join(member.parts)!r} -> {member.link_target!r} in "
                f"{archive}: it resolves to {resolved}, outside the archive."
            )


def _move_into_place(staging: Path, dest: Path) -> list[Path]:
    """Rename the extracted entries into dest and return their new paths."""
    if not dest.exists():
        names = sorted(entry.name for entry in staging.iterdir())
        staging.rename(dest)
        return [dest / name for name in names]

    entries = sorted(staging.iterdir())
    clashes = [entry.name for entry in entries if (dest / entry.name).exists()]
    if clashes:
        if len(clashes) == 1:
            clash_text = f"{clashes[0]} already exists there. Remove it"
        else:
            clash_text = f"{', '.join(clashes)} already exist there. Remove them"
        raise ValueError(
            f"Cannot unpack into {dest}: {clash_text} or choose another destination."
        )
    # NOTE: each rename is atomic, but a failure between two renames leaves the
    # entries moved so far in dest.
    for entry in entries:
        entry.rename(dest / entry.name)
    return [dest / entry.name for entry in entries]
