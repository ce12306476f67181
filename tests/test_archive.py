"""Tests for dataset sources and safe archive unpacking in mulde.video.archive."""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from mulde.video import archive as archive_module
from mulde.video.archive import DATASET_SOURCES, describe_sources, unpack_archive
from mulde.video.datasets import load_dataset

UCSD_TOP = "UCSD_Anomaly_Dataset.v1p2"
M_FILE = (
    "TestVideoFile = {};\n"
    "TestVideoFile{end+1}.gt_frame = [2:3];\n"
    "TestVideoFile{end+1}.gt_frame = [1:2];\n"
)


def tif_bytes(value: int) -> bytes:
    ok, encoded = cv2.imencode(".tif", np.full((8, 10), value, dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def ucsd_members() -> dict[str, bytes]:
    """Return the files of a tiny UCSDped2 copy in the original archive layout."""
    base = f"{UCSD_TOP}/UCSDped2"
    members = {}
    for clip, n_frames in (
        ("Train/Train001", 3),
        ("Test/Test001", 4),
        ("Test/Test002", 2),
    ):
        for index in range(1, n_frames + 1):
            members[f"{base}/{clip}/{index:03d}.tif"] = tif_bytes(20 * index)
    members[f"{base}/Test/Test001_gt/001.bmp"] = tif_bytes(0)
    members[f"{base}/Test/UCSDped2.m"] = M_FILE.encode()
    return members


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_tar_link(tar: tarfile.TarFile, name: str, target: str, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            add_tar_file(tar, name, data)
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zip_file:
        for name, data in files.items():
            zip_file.writestr(name, data)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if ".partial-" in path.name)


def test_sources_list_official_pages():
    assert DATASET_SOURCES["ped2"]["page"] == (
        "http://www.svcl.ucsd.edu/projects/anomaly/dataset.htm"
    )
    assert DATASET_SOURCES["ped1"]["page"] == DATASET_SOURCES["ped2"]["page"]
    assert DATASET_SOURCES["avenue"]["page"] == (
        "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/dataset.html"
    )
    assert DATASET_SOURCES["shanghaitech"]["page"] == (
        "https://svip-lab.github.io/dataset/campus_dataset.html"
    )
    assert DATASET_SOURCES["ped2"]["archive"] == "UCSD_Anomaly_Dataset.tar.gz"


def test_describe_sources_names_page_and_archive():
    text = describe_sources("Avenue")

    assert (
        "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/dataset.html" in text
    )
    assert "Avenue_Dataset.zip" in text
    assert "mulde data avenue --unpack ARCHIVE" in text


def test_describe_sources_unknown_name_raises():
    with pytest.raises(
        ValueError, match="Known datasets: ped1, ped2, avenue, shanghaitech"
    ):
        describe_sources("generic")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
def test_unpack_ucsd_archive_then_load(tmp_path, suffix):
    archive = tmp_path / f"UCSD_Anomaly_Dataset{suffix}"
    if suffix == ".zip":
        write_zip(archive, ucsd_members())
    else:
        write_tar(archive, ucsd_members(), "w" if suffix == ".tar" else "w:gz")
    dest = tmp_path / "data" / "ucsd"

    root = unpack_archive(archive, dest, "ped2")
    dataset = load_dataset("ped2", root)

    assert root == dest / UCSD_TOP / "UCSDped2"
    assert [clip.name for clip in dataset.train] == ["Train001"]
    assert [clip.name for clip in dataset.test] == ["Test001", "Test002"]
    assert [clip.labels.tolist() for clip in dataset.test] == [[0, 1, 1, 0], [1, 1]]
    assert leftovers(dest.parent) == []
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_unpack_into_existing_folder_merges(tmp_path):
    dest = tmp_path / "data"
    (dest / "other").mkdir(parents=True)
    archive = write_tar(tmp_path / "ucsd.tar.gz", ucsd_members())

    root = unpack_archive(archive, dest, "ped2")

    assert root == dest / UCSD_TOP / "UCSDped2"
    assert (dest / "other").is_dir()


def test_unpack_clash_with_existing_entry_raises(tmp_path):
    dest = tmp_path / "data"
    (dest / UCSD_TOP).mkdir(parents=True)
    archive = write_tar(tmp_path / "ucsd.tar.gz", ucsd_members())

    with pytest.raises(ValueError, match=f"{UCSD_TOP} already exist"):
        unpack_archive(archive, dest, "ped2")
    assert list((dest / UCSD_TOP).iterdir()) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("member", "reason"),
    [("../evil.txt", "'..' components"), ("/tmp/evil.txt", "absolute paths")],
)
def test_unpack_rejects_unsafe_paths(tmp_path, member, reason):
    files = ucsd_members()
    files[member] = b"payload"
    archive = write_tar(tmp_path / "bad.tar.gz", files)
    dest = tmp_path / "out" / "data"

    with pytest.raises(ValueError, match=f"Unsafe member '{member}'.*{reason}"):
        unpack_archive(archive, dest, "ped2")
    assert not dest.exists()
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert leftovers(tmp_path / "out") == []


def test_unpack_rejects_zip_member_with_dotdot(tmp_path):
    archive = write_zip(tmp_path / "bad.zip", {"a/../../evil.txt": b"payload"})

    with pytest.raises(ValueError, match=r"Unsafe member 'a/\.\./\.\./evil\.txt'"):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()


def test_unpack_rejects_symlink_outside(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in ucsd_members().items():
            add_tar_file(tar, name, data)
        add_tar_link(tar, f"{UCSD_TOP}/escape", "../../etc")

    with pytest.raises(ValueError, match=r"Unsafe link .*escape.*outside the archive"):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()
    assert leftovers(tmp_path) == []


def test_unpack_rejects_symlink_chain_outside(tmp_path):
    # "loop" points at its own folder, so "loop/loop/.." looks inside but is not.
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_link(tar, "top/loop", ".")
        add_tar_link(tar, "top/chain", "loop/loop/../..")

    with pytest.raises(ValueError, match=r"Unsafe link 'top/chain'"):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()


def test_unpack_rejects_zip_symlink_outside(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        info = zipfile.ZipInfo("top/escape")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zip_file.writestr(info, "/etc/passwd")

    with pytest.raises(ValueError, match=r"Unsafe link 'top/escape'.*absolute"):
        unpack_archive(archive, tmp_path / "dest", "ped2")


def test_unpack_keeps_symlink_inside(tmp_path):
    archive = tmp_path / "ucsd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in ucsd_members().items():
            add_tar_file(tar, name, data)
        add_tar_link(tar, f"{UCSD_TOP}/ped2", "UCSDped2")
        add_tar_link(
            tar,
            f"{UCSD_TOP}/copy.m",
            f"{UCSD_TOP}/UCSDped2/Test/UCSDped2.m",
            kind=tarfile.LNKTYPE,
        )

    root = unpack_archive(archive, tmp_path / "dest", "ped2")

    link = root.parent / "ped2"
    assert link.is_symlink()
    assert os.readlink(link) == "UCSDped2"
    assert (root.parent / "copy.m").read_text() == M_FILE


def record_copies(monkeypatch) -> list:
    """Record every file that unpack_archive writes, while still writing it."""
    real_copy = archive_module.shutil.copyfileobj
    targets = []

    def copy_and_record(source, target, *args):
        targets.append(target)
        return real_copy(source, target, *args)

    monkeypatch.setattr(archive_module.shutil, "copyfileobj", copy_and_record)
    return targets


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
@pytest.mark.parametrize("copy_name", ["Test/UCSDped2.m", "Test/./UCSDped2.m"])
def test_unpack_rejects_duplicate_members(tmp_path, monkeypatch, suffix, copy_name):
    archive = tmp_path / f"ucsd{suffix}"
    members = list(ucsd_members().items())
    members.append((f"{UCSD_TOP}/UCSDped2/{copy_name}", b"% replaced\n"))
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zip_file:
            for name, data in members:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
                    zip_file.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz") as tar:
            for name, data in members:
                add_tar_file(tar, name, data)
    copies = record_copies(monkeypatch)
    dest = tmp_path / "dest"

    with pytest.raises(
        ValueError, match=rf"Invalid archive .*ucsd{re.escape(suffix)}"
    ) as info:
        unpack_archive(archive, dest, "ped2")
    message = str(info.value)
    assert f"'{UCSD_TOP}/UCSDped2/Test/UCSDped2.m' (2 members)" in message
    assert "damaged or hand-made" in message
    assert copies == []
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_unpack_accepts_repeated_folder_entry(tmp_path):
    archive = tmp_path / "ucsd.tar"
    with tarfile.open(archive, "w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo(UCSD_TOP)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in ucsd_members().items():
            add_tar_file(tar, name, data)

    root = unpack_archive(archive, tmp_path / "dest", "ped2")

    assert root == tmp_path / "dest" / UCSD_TOP / "UCSDped2"


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
@pytest.mark.parametrize(
    "names",
    [("top/a", "top/a/b"), ("top/a/b", "top/a")],
    ids=["file_first", "folder_first"],
)
def test_unpack_rejects_file_folder_collision(tmp_path, monkeypatch, suffix, names):
    files = {name: b"data" for name in names}
    if suffix == ".zip":
        archive = write_zip(tmp_path / "bad.zip", files)
    else:
        archive = write_tar(tmp_path / "bad.tar", files, "w")
    copies = record_copies(monkeypatch)

    with pytest.raises(
        ValueError,
        match=rf"Invalid member 'top/a/b' in .*bad{suffix}: it needs 'top/a' to be a "
        "folder, but the archive contains 'top/a' as a file",
    ) as info:
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert "damaged or hand-made" in str(info.value)
    assert ".partial-" not in str(info.value)
    assert copies == []
    assert leftovers(tmp_path) == []


def test_unpack_rejects_symlink_used_as_folder(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        add_tar_file(tar, "top/sub/file", b"data")
        add_tar_link(tar, "top/link", "sub")
        add_tar_file(tar, "top/link/other", b"data")

    with pytest.raises(
        ValueError,
        match=r"Invalid member 'top/link/other' .*'top/link' as a symbolic link",
    ):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()


def test_unpack_collision_on_disk_names_member(tmp_path, monkeypatch):
    # Skipping the folder check simulates names that only a case-insensitive file
    # system treats as equal, which the checks before extraction cannot see.
    monkeypatch.setattr(archive_module, "_check_folder_collisions", lambda *_: None)
    archive = write_tar(tmp_path / "bad.tar", {"top/a": b"1", "top/a/b": b"2"}, "w")

    with pytest.raises(
        ValueError,
        match=r"Cannot extract member 'top/a/b' from .*bad\.tar: another member "
        "already uses its path",
    ) as info:
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert ".partial-" not in str(info.value)
    assert leftovers(tmp_path) == []


def test_unpack_rejects_zip_symlink_not_utf8(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        info = zipfile.ZipInfo("top/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zip_file.writestr(info, "café".encode("latin-1"))

    with pytest.raises(
        ValueError,
        match=r"Invalid symbolic link 'top/link' in .*bad\.zip: its target "
        r"b'caf\\xe9' is not valid UTF-8",
    ):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()
    assert leftovers(tmp_path) == []


def test_unpack_rejects_device_member(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("top/fifo")
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)

    with pytest.raises(ValueError, match=r"'top/fifo'.*special files"):
        unpack_archive(archive, tmp_path / "dest", "ped2")


def test_unpack_truncated_archive_leaves_nothing(tmp_path):
    archive = write_tar(tmp_path / "ucsd.tar.gz", ucsd_members())
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])

    with pytest.raises(ValueError, match=r"ucsd\.tar\.gz.*truncated or corrupt"):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()
    assert leftovers(tmp_path) == []


def test_unpack_interrupted_extraction_leaves_nothing(tmp_path, monkeypatch):
    archive = write_tar(tmp_path / "ucsd.tar.gz", ucsd_members())
    real_copy = archive_module.shutil.copyfileobj
    calls = []

    def copy_then_interrupt(source, target, *args):
        calls.append(target)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_copy(source, target, *args)

    monkeypatch.setattr(archive_module.shutil, "copyfileobj", copy_then_interrupt)

    with pytest.raises(KeyboardInterrupt):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert not (tmp_path / "dest").exists()
    assert leftovers(tmp_path) == []


def test_unpack_wrong_dataset_raises(tmp_path):
    archive = write_zip(tmp_path / "notes.zip", {"readme.txt": b"hello"})

    with pytest.raises(ValueError, match=r"found no avenue dataset folder"):
        unpack_archive(archive, tmp_path / "dest", "avenue")


def test_unpack_unsupported_format_raises(tmp_path):
    archive = tmp_path / "data.rar"
    archive.write_bytes(b"Rar!")

    with pytest.raises(ValueError, match=r"Unsupported archive .*data\.rar"):
        unpack_archive(archive, tmp_path / "dest", "ped2")
    assert leftovers(tmp_path) == []


def test_unpack_missing_archive_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.tar\.gz"):
        unpack_archive(tmp_path / "missing.tar.gz", tmp_path / "dest", "ped2")


def _unpack_command(archive: Path, dest: Path, capsys) -> tuple[int, str, str]:
    from mulde.cli import main

    code = main(["data", "ped2", "--unpack", str(archive), "--dest", str(dest)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unpack_command_names_the_run_command(tmp_path, capsys):
    archive = write_tar(tmp_path / "ucsd.tar.gz", ucsd_members())

    code, out, _ = _unpack_command(archive, tmp_path / "dest", capsys)

    assert code == 0
    assert f"--root {tmp_path / 'dest' / UCSD_TOP / 'UCSDped2'}" in out


@pytest.mark.parametrize("damage", ["empty clip", "no labels"])
def test_unpack_command_reports_unusable_dataset(tmp_path, capsys, damage):
    members = ucsd_members()
    if damage == "no labels":
        members = {
            name: data
            for name, data in members.items()
            if "_gt" not in name and not name.endswith(".m")
        }
    archive = tmp_path / "ucsd.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            if damage == "empty clip" and "/Test002/" in name:
                continue
            add_tar_file(tar, name, data)
        if damage == "empty clip":
            folder = tarfile.TarInfo(f"{UCSD_TOP}/UCSDped2/Test/Test002")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)

    code, out, err = _unpack_command(archive, tmp_path / "dest", capsys)

    assert code == 1
    assert out == ""
    assert "cannot use it yet" in err
    reason = err.split("cannot use it yet", 1)[1]
    if damage == "empty clip":
        assert f"No frame images in {tmp_path / 'dest'}" in reason
        assert "Test002" in reason
    else:
        assert "UCSDped2.m" in reason
    # The files are kept for the user to complete.
    assert (tmp_path / "dest" / UCSD_TOP / "UCSDped2" / "Train").is_dir()


def test_unpack_ped1_as_ped2_names_dest(tmp_path):
    members = {
        name.replace("UCSDped2", "UCSDped1"): data
        for name, data in ucsd_members().items()
    }
    archive = write_tar(tmp_path / "ucsd.tar.gz", members)
    dest = tmp_path / "dest"

    with pytest.raises(ValueError, match="looks like UCSD Ped1") as info:
        unpack_archive(archive, dest, "ped2")

    message = str(info.value)
    assert message.startswith(f"Nothing was unpacked into {dest}")
    assert ".partial-" not in message
    assert f"{dest / UCSD_TOP / 'UCSDped1'}" in message
    assert not dest.exists()
