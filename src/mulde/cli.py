"""Command-line interface: ``mulde run``, ``mulde data``, ``mulde study``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from mulde import __version__

logger = logging.getLogger("mulde")


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers such as 0,1,2"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Append "(default: X)" to help texts that name no default themselves.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter``, it leaves out defaults of
    None, False and empty lists, which mean "not given".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [])
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def _widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of widths such as 1024,1024"
        ) from error
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must list positive widths")
    return widths


def _add_run_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="score a video data set end to end and write metrics, plots and a report",
        description="Extract features of a data set's training and test clips, fit "
        "the detector on the training clips, score the test clips, and write "
        "metrics, plots, an HTML report and the fitted models to --out.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=["ped1", "ped2", "avenue", "shanghaitech", "generic"],
        help="data set layout (default: the --config file's, else ped2)",
    )
    data.add_argument("--root", help="data set folder (required except for generic)")
    data.add_argument(
        "--train-dir",
        help="generic layout: folder of training clips, relative to --root",
    )
    data.add_argument(
        "--test-dir", help="generic layout: folder of test clips, relative to --root"
    )
    data.add_argument(
        "--labels",
        help="labels file (.npy, .npz, .csv), relative to --root; for the generic "
        "layout, or where a data set's own labels are missing",
    )
    data.add_argument(
        "--max-train-clips",
        type=_positive_int,
        help="use only the first N training clips",
    )
    data.add_argument(
        "--max-test-clips", type=_positive_int, help="use only the first N test clips"
    )
    parser.add_argument("--out", required=True, help="run folder for all outputs")
    parser.add_argument(
        "--config",
        help="JSON file with configuration sections; options below override it",
    )
    parser.add_argument(
        "--cache-dir",
        help="feature cache folder (default $XDG_CACHE_HOME/mulde, else "
        "~/.cache/mulde)",
    )

    model = parser.add_argument_group("detector")
    model.add_argument(
        "--weighting",
        choices=["sigma2", "gaussian"],
        help="loss weighting lambda(sigma) (default sigma2)",
    )
    model.add_argument(
        "--sigma0",
        type=float,
        help="centre of the gaussian weighting, in standard deviations (default 0.33)",
    )
    model.add_argument(
        "--s",
        type=float,
        help="width of the gaussian weighting, in standard deviations (default 0.075)",
    )
    model.add_argument(
        "--importance-sampling",
        action="store_true",
        default=None,
        help="draw sigma from a proposal near p(sigma) lambda(sigma) (default off)",
    )
    model.add_argument(
        "--epochs", type=_positive_int, help="training epochs (default 20)"
    )
    model.add_argument(
        "--hidden-sizes", type=_widths, help="hidden widths (default 512,512)"
    )
    model.add_argument(
        "--batch-size", type=_positive_int, help="batch size (default 1024)"
    )
    model.add_argument(
        "--learning-rate", type=float, help="Adam learning rate (default 1e-3)"
    )
    model.add_argument(
        "--beta",
        type=float,
        help="weight beta of the regulariser beta * f(x, sigma)^2 on clean "
        "training rows, which ties the noise levels together (default 0.1)",
    )
    model.add_argument(
        "--n-levels", type=_positive_int, help="evaluation levels L (default 16)"
    )
    model.add_argument(
        "--level-grid",
        choices=["linear", "log"],
        help="evaluation grid (default linear)",
    )
    model.add_argument(
        "--aggregation",
        choices=["gmm", "max", "mean", "median", "level"],
        help="how the L levels become one score (default gmm); 'level' takes the "
        "energy at --level-index alone",
    )
    model.add_argument(
        "--level-index",
        type=int,
        help="with --aggregation level: which of the L levels scores, from 0 "
        "(smallest sigma) to L - 1 (largest)",
    )
    model.add_argument(
        "--n-components", type=_positive_int, help="mixture components (default 1)"
    )
    model.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")

    scoring = parser.add_argument_group("features and scoring")
    scoring.add_argument(
        "--features",
        choices=["grid", "object", "frame"],
        help="grid: one row per grid cell with foreground; object: one row per "
        "proposed object; frame: one row per frame (default grid)",
    )
    scoring.add_argument(
        "--flow-gap",
        type=_positive_int,
        help="frames between the two images of each optical flow (default 4)",
    )
    scoring.add_argument(
        "--scoring",
        choices=["concat", "per_group"],
        help="one detector on all feature groups, or one per group (default concat)",
    )
    scoring.add_argument(
        "--smoothing",
        type=float,
        help="Gaussian smoothing of frame scores along time, sigma in frames "
        "(default 3)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of every random draw (default 0)"
    )
    parser.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="S1,S2,...",
        help="run once per seed into --out/seed-S, extracting features once, and "
        "write the mean, standard deviation and range of the metrics to "
        "--out/seeds.json",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration as JSON and exit",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors"
    )


def _add_data_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="show where to download a data set, or unpack its archive",
        description="Print the download page and archive name of a data set, or "
        "with --unpack, check its archive and unpack it into --dest.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "dataset", choices=["ped1", "ped2", "avenue", "shanghaitech"], help="data set"
    )
    parser.add_argument("--unpack", metavar="ARCHIVE", help="archive file to unpack")
    parser.add_argument(
        "--dest", default="data", help="folder to unpack the archive into"
    )


def _add_score_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score new clips with the detector of a finished run",
        description="Score every clip (a folder of frames or a video file) in "
        "--clips with the features, PCA, detector and smoothing that `mulde run` "
        "saved in --run, and write one CSV row per frame.",
    )
    parser.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="--out folder of a mulde run"
    )
    parser.add_argument(
        "--clips", required=True, metavar="FOLDER", help="folder of clips to score"
    )
    parser.add_argument(
        "--out", required=True, metavar="CSV", help="CSV file to write the scores to"
    )
    parser.add_argument(
        "--cache-dir",
        help="feature cache root (default: the run's, else $XDG_CACHE_HOME/mulde); "
        "features of scored clips go to its subfolder 'scored'",
    )
    parser.add_argument(
        "--device",
        help="auto, cpu, cuda or cuda:N (default: the run's device where "
        "available, else cpu)",
    )
    parser.add_argument(
        "--labels",
        metavar="PATH",
        help="frame labels of the clips (0 normal, 1 anomalous; any format that "
        "mulde run --labels reads): adds a label column and writes micro and "
        "macro AUC and AP to the CSV's name with the suffix .metrics.json",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors"
    )


def _score(args: argparse.Namespace) -> int:
    from mulde.network import resolve_device
    from mulde.score_video import score_clip_folder

    if args.device is not None:
        try:
            resolve_device(args.device)
        except ValueError as error:
            raise ValueError(
                f"--device {args.device}: {error} Pass --device cpu, or --device "
                "auto to use CUDA only where it is available."
            ) from error
    if args.out.endswith(("/", os.sep)):
        # Path() drops the slash, which would make a file of that folder's name.
        raise IsADirectoryError(
            f"Cannot write the scores (--out) to {args.out}: it is a folder; give "
            f"the path of a file, such as {Path(args.out) / 'scores.csv'}."
        )
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    smoothed = score_clip_folder(
        Path(args.run),
        Path(args.clips),
        Path(args.out),
        cache_dir,
        not args.quiet,
        args.device,
        Path(args.labels) if args.labels else None,
    )
    frames = sum(len(values) for values in smoothed.values())
    print(f"scored {len(smoothed)} clips, {frames} frames: {args.out}")
    return 0


def resolve_run_config(args: argparse.Namespace):
    from mulde.config import RunConfig

    config = RunConfig.from_file(Path(args.config)) if args.config else RunConfig()
    dataset = config.dataset
    if args.dataset is not None:
        dataset.name = args.dataset
    for name in (
        "root",
        "train_dir",
        "test_dir",
        "labels",
        "max_train_clips",
        "max_test_clips",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(dataset, name, value)
    detector_options = {
        "weighting": args.weighting,
        "sigma0": args.sigma0,
        "s": args.s,
        "importance_sampling": args.importance_sampling,
        "epochs": args.epochs,
        "hidden_sizes": args.hidden_sizes,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "beta": args.beta,
        "n_levels": args.n_levels,
        "level_grid": args.level_grid,
        "aggregation": args.aggregation,
        "level_index": args.level_index,
        "n_components": args.n_components,
        "device": args.device,
    }
    config.detector |= {k: v for k, v in detector_options.items() if v is not None}
    aggregation = config.detector.get("aggregation")
    if args.level_index is not None and aggregation != "level":
        raise ValueError(
            f"--level-index {args.level_index} applies only with --aggregation "
            f"level, but the aggregation is {aggregation!r}; add --aggregation "
            "level or drop --level-index."
        )
    if args.features is not None:
        config.features["mode"] = args.features
    if args.flow_gap is not None:
        config.features["flow_gap"] = args.flow_gap
    if args.scoring is not None:
        config.scoring.scoring = args.scoring
    if args.smoothing is not None:
        config.scoring.smoothing_sigma = args.smoothing
    if args.seed is not None:
        config.seed = args.seed
    if args.cache_dir is not None:
        config.cache_dir = args.cache_dir
    if args.quiet:
        config.verbose = 0
    config.validate()
    return config


def _run(args: argparse.Namespace) -> int:
    from mulde.pipeline import check_seeds, run, run_seeds, seeds_summary_line

    config = resolve_run_config(args)
    if args.seeds is not None:
        if args.seed is not None:
            raise ValueError("Give --seed or --seeds, not both.")
        check_seeds(args.seeds)
    if args.dry_run:
        config.resolve_defaults()
        print(json.dumps(config.to_dict(), indent=2))
        if args.seeds is not None:
            print(
                f"mulde run: note: --seeds runs this configuration once per seed: "
                f"{', '.join(map(str, args.seeds))}.",
                file=sys.stderr,
            )
        root = config.dataset.root
        if root is not None and not Path(root).expanduser().is_dir():
            print(
                f"mulde run: note: dataset root {root} does not exist; a run "
                "with this configuration would stop there.",
                file=sys.stderr,
            )
        return 0
    if args.seeds is not None:
        summary = run_seeds(config, args.out, args.seeds)
        if config.verbose >= 1 and sys.stdout.isatty() and sys.stderr.isatty():
            return 0  # the log's last line already showed the result
        print(seeds_summary_line(summary, Path(args.out) / "seeds.json"))
        return 0
    # The string, not Path(args.out): Path('') is '.', which hides an empty --out.
    metrics = run(config, args.out)
    if config.verbose >= 1 and sys.stdout.isatty() and sys.stderr.isatty():
        return 0  # the log's last line already showed the result on this terminal
    macro = "n/a" if metrics["macro_auc"] is None else f"{metrics['macro_auc']:.4f}"
    print(
        f"micro AUC {metrics['micro_auc']:.4f}  macro AUC {macro}"
        f"  AP {metrics['average_precision']:.4f}  report: "
        f"{Path(args.out) / 'report.html'}"
    )
    return 0


def _data(args: argparse.Namespace) -> int:
    from mulde.video.archive import check_unpacked, describe_sources, unpack_archive

    if args.unpack is None:
        print(describe_sources(args.dataset))
        return 0
    root = unpack_archive(Path(args.unpack), Path(args.dest), args.dataset)
    problem = check_unpacked(args.dataset, root)
    if problem is not None:
        print(
            f"Unpacked {args.dataset} to {root}, but `mulde run` cannot use it "
            f"yet: {problem}\nThe files stay there: add what is missing (some "
            "datasets ship their labels in a second archive, which unpacks with the "
            "same --dest), or download the archive again.",
            file=sys.stderr,
        )
        return 1
    print(
        f"Unpacked {args.dataset} to {root}; run it with: mulde run --dataset "
        f"{args.dataset} --root {root} --out runs/{args.dataset}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mulde",
        description="Video anomaly detection by multiscale denoising score matching.",
    )
    parser.add_argument("--version", action="version", version=f"mulde {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_data_parser(subparsers)
    _add_score_parser(subparsers)
    try:
        from mulde.study import add_study_parser
    except ImportError:
        pass
    else:
        add_study_parser(subparsers)
        study = subparsers.choices["study"]
        # The study's help texts state their own defaults, which argparse's
        # ArgumentDefaultsHelpFormatter would print a second time.
        study.formatter_class = _HelpFormatter
        if study.description is None:
            study.description = (
                "Fit the detector with the sigma2 and the gaussian loss weighting "
                "on the same one-class splits of the --adbench sets and --ped2, and "
                "write the AUCs of both, with paired Wilcoxon tests, to "
                "--out/study.json."
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command in ("run", "study", "score"):
        from mulde.allocator import reuse_freed_memory

        reuse_freed_memory()
    commands = {"run": _run, "data": _data, "score": _score}
    if args.command == "study":
        from mulde.study import study_command

        commands["study"] = study_command
    # SIGTERM unwinds like Ctrl-C, so staging folders and temporary files are
    # removed on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        hint = ""
        if args.command == "study":
            hint = (
                f"; the finished data sets are in {Path(args.out) / 'study.json'}, "
                "and the same command with --resume runs the rest"
            )
        print(f"mulde {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of standard output closed it, as `| head` does: no error
        # to report. Standard output goes to the null device so that Python's
        # final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (ValueError, OSError, RuntimeError) as error:
        print(f"mulde {args.command}: error: {error}", file=sys.stderr)
        return 2


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
