"""Help texts, log lines and error messages of the command line."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PED2
from test_archive import UCSD_TOP, ucsd_members, write_tar

from mulde.cli import build_parser, main
from mulde.video.archive import unpack_archive
from mulde.video.datasets import discover_clips
from mulde.video.readers import VideoReadError

FAST = ["--epochs", "1", "--hidden-sizes", "16,16", "--batch-size", "256"]
GENERIC = ["--dataset", "generic", "--train-dir", "train", "--test-dir", "test"]
GENERIC += ["--labels", "labels.npz"]
N_FRAMES = 12


def _copy_frames(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.jpg"))[:N_FRAMES]:
        shutil.copy(path, target / path.name)


def _run_args(base: Path) -> list[str]:
    args = ["run", "--root", str(base / "data"), "--out", str(base / "run")]
    return args + ["--cache-dir", str(base / "cache")] + GENERIC + FAST


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished run on one training and one test clip of 12 real Ped2 frames."""
    if not PED2.is_dir():
        pytest.skip(f"{PED2} is not present")
    base = tmp_path_factory.mktemp("messages")
    root = base / "data"
    _copy_frames(PED2 / "training" / "frames" / "01", root / "train" / "a")
    _copy_frames(PED2 / "testing" / "frames" / "02", root / "test" / "c")
    np.savez(root / "labels.npz", c=np.r_[np.zeros(6), np.ones(6)].astype(np.int8))
    assert main(_run_args(base) + ["--quiet"]) == 0
    return base


# ------------------------------------------------------------- help texts


@pytest.mark.parametrize("command", ["run", "data", "score", "study"])
def test_subcommand_help_has_description(command, capsys):
    if command not in build_parser().format_usage():
        pytest.skip(f"mulde {command} is not installed")

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])

    assert exited.value.code == 0
    # argparse prints the usage, then the description, then the arguments, with
    # a blank line between them.
    usage, after_usage = capsys.readouterr().out.split("\n\n", 1)
    assert usage.startswith(f"usage: mulde {command}")
    first_line = after_usage.splitlines()[0]
    assert not first_line.endswith(":"), first_line


# ------------------------------------------------------------- log lines


def test_score_logs_clips_as_new(small_run, tmp_path, caplog):
    clips = tmp_path / "clips"
    _copy_frames(PED2 / "testing" / "frames" / "03", clips / "cam12")
    out = tmp_path / "scores.csv"
    args = ["score", "--run", str(small_run / "run"), "--clips", str(clips)]
    args += ["--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    caplog.set_level(logging.INFO)

    assert main(args) == 0

    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("features new: clip cam12 extracted") for m in messages)
    assert any(m.startswith("new: 1 clips (1 extracted, 0 cached)") for m in messages)
    assert not any(m.startswith("train:") for m in messages)
    assert not any(m.startswith("test:") for m in messages)
    assert not any("test" in m for m in messages if m.startswith("features"))


def test_run_logs_train_and_test_splits(small_run, tmp_path, caplog):
    args = _run_args(small_run)
    args[args.index("--out") + 1] = str(tmp_path / "again")
    caplog.set_level(logging.INFO)

    assert main(args) == 0

    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("train: 1 clips (0 extracted, 1 cached)") for m in messages)
    assert any(m.startswith("test: 1 clips (0 extracted, 1 cached)") for m in messages)
    assert not any(m.startswith("new:") for m in messages)


# ------------------------------------------------------------- empty folders


def test_score_empty_clips_folder_hint(small_run, tmp_path, capsys):
    clips = tmp_path / "emptyclips"
    clips.mkdir()
    args = ["score", "--run", str(small_run / "run"), "--clips", str(clips)]
    args += ["--out", str(tmp_path / "scores.csv"), "--quiet"]

    assert main(args) == 2

    err = capsys.readouterr().err
    assert f"No clips in {clips}" in err
    assert "Point --clips at a folder" in err
    assert "dataset was extracted" not in err
    assert not (tmp_path / "scores.csv").exists()


def test_empty_split_folder_keeps_dataset_hint(tmp_path):
    with pytest.raises(VideoReadError, match="dataset was extracted completely"):
        discover_clips(tmp_path)


# ------------------------------------------------------------- unpack clashes


def test_unpack_one_clash_singular(tmp_path):
    dest = tmp_path / "unpacked"
    (dest / UCSD_TOP).mkdir(parents=True)
    archive = write_tar(tmp_path / "ucsd.tar.gz", ucsd_members())

    with pytest.raises(ValueError) as raised:
        unpack_archive(archive, dest, "ped2")

    message = str(raised.value)
    assert f"{UCSD_TOP} already exists there. Remove it or" in message
    assert "already exist there" not in message


def test_unpack_two_clashes_plural(tmp_path):
    dest = tmp_path / "unpacked"
    (dest / UCSD_TOP).mkdir(parents=True)
    (dest / "README.txt").write_text("old", encoding="utf-8")
    members = ucsd_members() | {"README.txt": b"new"}
    archive = write_tar(tmp_path / "ucsd.tar.gz", members)

    with pytest.raises(ValueError) as raised:
        unpack_archive(archive, dest, "ped2")

    message = str(raised.value)
    assert f"README.txt, {UCSD_TOP} already exist there." in message
    assert "Remove them or choose another destination." in message


def test_closed_standard_output_is_not_an_error(tmp_path):
    import os
    import subprocess
    import sys

    # The reader is gone before the first write, as with `| head` on long output.
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = ["--dataset", "ped2", "--root", str(tmp_path), "--out", str(tmp_path)]
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mulde.cli", "run", *args, "--dry-run", "-q"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)

    assert result.returncode == 141
    assert "error" not in result.stderr.lower()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"detektor": {}}, "Unknown configuration key(s) detektor; valid keys: "),
        ({"features": {"grid_cel": 20}}, "Unknown features key(s) grid_cel; valid "),
        ({"detector": {"hidden": [8]}}, "Unknown detector key(s) hidden; valid keys: "),
        ({"scoring": {"smooth": 1}}, "Unknown scoring key(s) smooth; valid keys: "),
    ],
)
def test_unknown_keys_share_one_message(data, expected):
    from mulde.config import RunConfig

    with pytest.raises(ValueError) as info:
        config = RunConfig.from_dict(data)
        config.validate()
    assert str(info.value).startswith(expected)
