"""The weighting study: does the Gaussian lambda(sigma) help, and where is sigma best?

Every variant shares the features, network, training length, optimiser, beta and
evaluation; only the loss weighting (and for one variant the sigma sampler)
changes. All choices are fixed in ``StudyConfig`` before any test label is read,
and written into ``study.json``.

Each fitted model is evaluated three ways:

- ``full``: all L levels of the linear grid, aggregated by the Gaussian mixture
  (the published protocol);
- ``focus``: 8 levels evenly spaced in [sigma0 - 2 s, sigma0 + 2 s] of the
  variant's Gaussian weighting (for ``sigma2``, the window of the default
  Gaussian weighting, so that the pair is compared on the same levels),
  aggregated by a mixture;
- ``levels``: the AUC of every level of the full grid alone, for energies and
  for score norms.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from mulde.aggregate import LevelAggregator
from mulde.detector import MULDE
from mulde.persistence import atomic_write

logger = logging.getLogger(__name__)

REFERENCE_WINDOW = (0.33, 0.075)
N_FOCUS_LEVELS = 8


@dataclass(frozen=True)
class Variant:
    """One training set-up of the study."""

    name: str
    weighting: str
    sigma0: float = 0.33
    s: float = 0.075
    importance_sampling: bool = False
    n_seeds: int = 5

    def detector_params(self) -> dict:
        return {
            "weighting": self.weighting,
            "sigma0": self.sigma0,
            "s": self.s,
            "importance_sampling": self.importance_sampling,
        }

    def window(self) -> tuple[float, float]:
        sigma0, s = (
            (self.sigma0, self.s) if self.weighting == "gaussian" else REFERENCE_WINDOW
        )
        return max(sigma0 - 2 * s, 1e-3), sigma0 + 2 * s


def default_variants(main_seeds: int = 5, sweep_seeds: int = 3) -> list[Variant]:
    variants = [
        Variant("sigma2", "sigma2", n_seeds=main_seeds),
        Variant("gaussian", "gaussian", n_seeds=main_seeds),
        Variant(
            "gaussian-is", "gaussian", importance_sampling=True, n_seeds=main_seeds
        ),
    ]
    for sigma0 in (0.2, 0.33, 0.5):
        for s in (0.05, 0.075, 0.15):
            if (sigma0, s) == REFERENCE_WINDOW:
                continue  # the same set-up as "gaussian", whose seeds are reused
            variants.append(
                Variant(
                    f"gaussian-{sigma0}-{s}", "gaussian", sigma0, s, n_seeds=sweep_seeds
                )
            )
    return variants


@dataclass
class StudyConfig:
    """The fixed settings of a study run.

    The network and training length are sized so that the full study (12 ADBench
    sets, 3 splits, 5 + 3 seeds, 11 variants, plus Ped2) fits in a few hours on
    2 CPU cores: 128 x 128 hidden units and 600 steps of 256 rows per fit.
    """

    adbench_dir: str | None = None
    ped2_root: str | None = None
    ped2_cache_dir: str | None = None
    splits: int = 3
    train_share: float = 0.5
    main_seeds: int = 5
    sweep_seeds: int = 3
    detector: dict = field(
        default_factory=lambda: {
            "hidden_sizes": [128, 128],
            "batch_size": 256,
            "learning_rate": 1e-3,
            "beta": 0.1,
            "n_levels": 16,
            "level_grid": "linear",
            "n_components": 1,
        }
    )
    steps: int = 400
    ped2_steps: int = 1500
    max_datasets: int | None = None
    baselines: bool = True

    @classmethod
    def quick(cls, **overrides) -> StudyConfig:
        config = cls(splits=1, main_seeds=2, sweep_seeds=1, steps=30, ped2_steps=30)
        config.detector["hidden_sizes"] = [32, 32]
        for key, value in overrides.items():
            setattr(config, key, value)
        return config


def epochs_for(n_rows: int, batch_size: int, steps: int) -> int:
    """Epochs that give about ``steps`` optimiser steps on ``n_rows`` rows."""
    per_epoch = math.ceil(n_rows / min(batch_size, n_rows))
    return max(1, round(steps / per_epoch))


# ----------------------------------------------------------------- evaluation


def evaluate_model(
    detector: MULDE,
    X_fit: np.ndarray,
    X_test: np.ndarray,
    window: tuple[float, float],
    seed: int,
) -> dict:
    """Row-level anomaly scores of the three evaluations, and band losses.

    Returns a dict with ``full`` and ``focus`` (scores of shape (n_test,)),
    ``level_energy`` and ``level_norm`` (standardised per-level values of
    shape (n_test, L), higher = more anomalous).
    """
    focus_levels = np.linspace(window[0], window[1], N_FOCUS_LEVELS)
    full_levels = detector.levels_
    grid = np.concatenate([full_levels, focus_levels])
    fit_energy, fit_norm = detector.multiscale_scores(
        X_fit, score_norms=True, levels=grid
    )
    test_energy, test_norm = detector.multiscale_scores(
        X_test, score_norms=True, levels=grid
    )
    n_full = len(full_levels)

    full = detector.aggregator_.score(test_energy[:, :n_full])
    focus_aggregator = LevelAggregator("gmm", random_state=seed).fit(
        fit_energy[:, n_full:]
    )
    focus = focus_aggregator.score(test_energy[:, n_full:])

    def standardise(train, test):
        scale = train.std(axis=0)
        return (test - train.mean(axis=0)) / np.where(scale > 0, scale, 1.0)

    return {
        "full": full,
        "focus": focus,
        "level_energy": standardise(fit_energy[:, :n_full], test_energy[:, :n_full]),
        # A large score norm means x lies on a slope of the density, away from
        # its modes, so a larger norm is taken as more anomalous.
        "level_norm": standardise(fit_norm[:, :n_full], test_norm[:, :n_full]),
    }


def band_losses(
    detector: MULDE, X_fit: np.ndarray, bands: np.ndarray, seed: int
) -> list:
    """Mean ||sigma grad f(x + sigma eps) - eps||^2 / d of training rows at each sigma.

    This is the denoising error without any weighting: where it is near 1 the
    network has learnt nothing at that level, lower is better.
    """
    import torch

    from mulde.score_matching import dsm_loss

    rng = np.random.default_rng(seed)
    rows = X_fit[rng.choice(len(X_fit), size=min(512, len(X_fit)), replace=False)]
    x = detector._to_tensor(rows.astype(np.float32))
    generator = torch.Generator(device=detector.device_).manual_seed(seed)
    losses = []
    for sigma_value in bands:
        sigma = torch.full((x.shape[0],), float(sigma_value), device=detector.device_)
        parts = dsm_loss(detector.network_, x, sigma, sigma.square(), 0.0, generator)
        losses.append(float(parts.score_matching.detach()) / x.shape[1])
    return losses


def row_metrics(y: np.ndarray, scores: np.ndarray) -> dict:
    return {
        "auc": float(roc_auc_score(y, scores)),
        "average_precision": float(average_precision_score(y, scores)),
    }


# ------------------------------------------------------------------- datasets


# Normal rows an ADBench set needs: a one-class split fits on some and tests on
# the rest, and every AUC of a set with fewer is close to chance by construction.
MIN_NORMAL_ROWS = 20


def one_class_splits(y: np.ndarray, n_splits: int, train_share: float, seed: int = 0):
    """Yield (fit_rows, test_rows): a random share of normal rows to fit, the rest
    of the normal rows and all anomalies to test."""
    normal = np.flatnonzero(y == 0)
    anomalous = np.flatnonzero(y == 1)
    for split in range(n_splits):
        rng = np.random.default_rng([seed, split])
        shuffled = rng.permutation(normal)
        n_fit = int(round(train_share * len(normal)))
        yield (
            np.sort(shuffled[:n_fit]),
            np.sort(np.concatenate([shuffled[n_fit:], anomalous])),
        )


def load_adbench(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every ``.npz`` with arrays X and y in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ADBench folder {folder} does not exist.")
    sets = {}
    for path in sorted(folder.glob("*.npz")):
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            # numpy's own message for a non-archive suggests loading it with
            # pickle, which must not be done with a file from elsewhere.
            raise ValueError(
                f"{path} is not a readable .npz file ({type(error).__name__}); "
                "replace or remove it."
            ) from None
        try:
            with archive as data:
                names = sorted(data.files)
                X = data["X"].astype(np.float64) if "X" in names else None
                y = data["y"].astype(np.float64).ravel() if "y" in names else None
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{path} cannot be read as numeric X and y arrays ({error})."
            ) from None
        if X is None or y is None:
            raise ValueError(
                f"{path} has arrays {names}; an ADBench file needs X (n x d "
                "features) and y (0 normal, 1 anomaly)."
            )
        if X.ndim == 2 and not np.isfinite(X).all():
            rows = int((~np.isfinite(X)).any(axis=1).sum())
            raise ValueError(
                f"{path}: X has NaN or infinite values in {rows} row(s); remove or "
                "impute them before the study."
            )
        if X.ndim != 2:
            raise ValueError(
                f"{path}: X has shape {X.shape}; it must be 2-D, one row of "
                "features per sample (n x d)."
            )
        if len(X) != len(y):
            raise ValueError(
                f"{path}: X has shape {X.shape} but y has {len(y)} labels."
            )
        others = np.unique(y[(y != 0) & (y != 1)])
        if others.size:
            raise ValueError(
                f"{path}: y has values other than 0 (normal) and 1 (anomaly), such "
                f"as {others[:3].tolist()}; give one 0 or 1 label per row."
            )
        if y.min() == y.max():
            raise ValueError(f"{path}: y must hold both 0 (normal) and 1 (anomaly).")
        n_normal = int((y == 0).sum())
        if n_normal < MIN_NORMAL_ROWS:
            raise ValueError(
                f"{path} has {n_normal} normal rows; a one-class split needs at "
                f"least {MIN_NORMAL_ROWS}, to fit on some and test the rest. Remove "
                "the file from the folder or add rows."
            )
        sets[path.stem] = (X, y.astype(int))
    if not sets:
        raise FileNotFoundError(f"No .npz files found in {folder}.")
    return sets


def baseline_scores(X_fit: np.ndarray, X_test: np.ndarray, seed: int) -> dict:
    """Anomaly scores of PyOD's IForest, KNN, LOF, ECOD and a Gaussian mixture."""
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_fit)
    fit, test = scaler.transform(X_fit), scaler.transform(X_test)
    neighbours = min(20, len(fit) - 1)
    detectors = {
        "IForest": IForest(random_state=seed),
        "KNN": KNN(n_neighbors=min(5, len(fit) - 1)),
        "LOF": LOF(n_neighbors=neighbours),
        "ECOD": ECOD(),
    }
    scores = {
        name: model.fit(fit).decision_function(test)
        for name, model in detectors.items()
    }
    mixture = GaussianMixture(
        n_components=1, covariance_type="full", reg_covar=1e-3, random_state=seed
    ).fit(fit)
    scores["GaussianMixture"] = -mixture.score_samples(test)
    return scores


# ---------------------------------------------------------------- statistics


def interval(values, bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Mean and 95% t-interval of independent runs, cut to ``bounds``.

    Every value summarised here is an AUC or an average precision, so the
    default bounds are [0, 1]. With few runs the t-interval is wide and would
    otherwise reach past them.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": int(len(values))}
    half = (
        stats.t.ppf(0.975, len(values) - 1)
        * values.std(ddof=1)
        / math.sqrt(len(values))
    )
    return {
        "mean": mean,
        "low": max(mean - half, bounds[0]),
        "high": min(mean + half, bounds[1]),
        "n": int(len(values)),
    }


def paired_comparison(
    variant: list[float], reference: list[float], seed: int = 0
) -> dict:
    """Paired differences variant - reference over the same seeds and splits.

    Returns the mean difference with a 95% bootstrap interval, Cohen's d_z
    (mean over standard deviation of the differences) and the Wilcoxon
    signed-rank p-value (None with fewer than 2 non-zero differences).
    """
    diff = np.asarray(variant, dtype=np.float64) - np.asarray(
        reference, dtype=np.float64
    )
    rng = np.random.default_rng(seed)
    boot = rng.choice(diff, size=(5000, len(diff)), replace=True).mean(axis=1)
    spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
    nonzero = np.count_nonzero(diff)
    p_value = float(stats.wilcoxon(diff).pvalue) if nonzero >= 2 else None
    return {
        "mean_difference": float(diff.mean()),
        "low": float(np.quantile(boot, 0.025)),
        "high": float(np.quantile(boot, 0.975)),
        "effect_size_dz": float(diff.mean() / spread) if spread > 0 else None,
        "wilcoxon_p": p_value,
        "n_pairs": int(len(diff)),
    }


def outcome(comparison: dict) -> str:
    """``win`` or ``loss`` when the bootstrap interval excludes 0, else ``tie``."""
    if comparison["low"] > 0:
        return "win"
    if comparison["high"] < 0:
        return "loss"
    return "tie"


# --------------------------------------------------------------------- runner


def _fit(variant: Variant, config: StudyConfig, X_fit, steps: int, seed: int) -> MULDE:
    params = dict(config.detector) | variant.detector_params()
    params["epochs"] = epochs_for(len(X_fit), params["batch_size"], steps)
    return MULDE(**params, random_state=seed).fit(X_fit)


def study_tabular(name, X, y, variants, config, records, bands) -> None:
    for split, (fit_rows, test_rows) in enumerate(
        one_class_splits(y, config.splits, config.train_share)
    ):
        X_fit, X_test, y_test = X[fit_rows], X[test_rows], y[test_rows]
        if config.baselines:
            for method, scores in baseline_scores(X_fit, X_test, split).items():
                records.append(
                    {
                        "dataset": name,
                        "variant": method,
                        "kind": "baseline",
                        "split": split,
                        "seed": None,
                        "full": row_metrics(y_test, scores),
                    }
                )
        for variant in variants:
            for seed in range(variant.n_seeds):
                start = time.perf_counter()
                detector = _fit(variant, config, X_fit, config.steps, seed)
                scores = evaluate_model(detector, X_fit, X_test, variant.window(), seed)
                records.append(
                    {
                        "dataset": name,
                        "variant": variant.name,
                        "kind": "mulde",
                        "split": split,
                        "seed": seed,
                        "full": row_metrics(y_test, scores["full"]),
                        "focus": row_metrics(y_test, scores["focus"]),
                        "level_auc_energy": [
                            float(roc_auc_score(y_test, c))
                            for c in scores["level_energy"].T
                        ],
                        "level_auc_norm": [
                            float(roc_auc_score(y_test, c))
                            for c in scores["level_norm"].T
                        ],
                        "band_loss": band_losses(detector, X_fit, bands, seed),
                        "seconds": time.perf_counter() - start,
                    }
                )
                logger.info(
                    "%s split %d %s seed %d: AUC full %.4f focus %.4f (%.1f s)",
                    name,
                    split,
                    variant.name,
                    seed,
                    records[-1]["full"]["auc"],
                    records[-1]["focus"]["auc"],
                    records[-1]["seconds"],
                )


def study_ped2(variants, config, records, bands) -> None:
    """Ped2 from cached object-centric features, scored per frame.

    The study keeps the object mode, the float32 backbone and the DIS ultrafast
    flow that its recorded results used, although the main job now defaults to
    grid cells, bfloat16 on CPUs with AMX and DIS medium, so that a rerun
    reproduces them.
    """
    from mulde.config import RunConfig
    from mulde.evaluation import frame_metrics, smooth
    from mulde.features import FeatureConfig, extract_dataset
    from mulde.pipeline import (
        GroupModel,
        _fit_pca,
        _frame_max,
        _stack,
        default_cache_dir,
    )
    from mulde.video import load_dataset

    run_config = RunConfig()
    run_config.features = {
        "mode": "object",
        "precision": "float32",
        "flow_preset": "ultrafast",
    }
    dataset = load_dataset("ped2", Path(config.ped2_root))
    cache_dir = (
        Path(config.ped2_cache_dir) if config.ped2_cache_dir else default_cache_dir()
    )
    features = extract_dataset(
        dataset, FeatureConfig.from_dict(run_config.features), cache_dir
    )
    train, test = features["train"], features["test"]
    groups = run_config.feature_groups()
    pcas = [
        _fit_pca(_stack(train, g), run_config.scoring.pca_components, 0, g)
        for g in groups
    ]
    model = GroupModel(groups, pcas, detector=None)  # type: ignore[arg-type]
    X_fit = np.concatenate([model.transform(c.groups) for c in train.values()])
    test_rows = {name: model.transform(c.groups) for name, c in test.items()}
    X_test = np.concatenate(list(test_rows.values()))
    bounds = np.cumsum([0] + [len(r) for r in test_rows.values()])
    labels = {c.name: np.asarray(c.labels).astype(int) for c in dataset.test}
    sigma_frames = run_config.scoring.smoothing_sigma

    def per_frame(row_scores: np.ndarray) -> dict:
        frames = {}
        for k, (name, clip) in enumerate(test.items()):
            values = row_scores[bounds[k] : bounds[k + 1]]
            frames[name] = _frame_max(
                values,
                clip.frame_index,
                clip.n_frames,
                values.min() if len(values) else 0.0,
            )
        return frames

    def metrics(row_scores: np.ndarray) -> dict:
        result = frame_metrics(smooth(per_frame(row_scores), sigma_frames), labels)
        return {
            "auc": result["micro_auc"],
            "macro_auc": result["macro_auc"],
            "average_precision": result["average_precision"],
        }

    for variant in variants:
        for seed in range(variant.n_seeds):
            start = time.perf_counter()
            detector = _fit(variant, config, X_fit, config.ped2_steps, seed)
            scores = evaluate_model(detector, X_fit, X_test, variant.window(), seed)
            records.append(
                {
                    "dataset": "ped2",
                    "variant": variant.name,
                    "kind": "mulde",
                    "split": 0,
                    "seed": seed,
                    "full": metrics(scores["full"]),
                    "focus": metrics(scores["focus"]),
                    "level_auc_energy": [
                        metrics(c)["auc"] for c in scores["level_energy"].T
                    ],
                    "level_auc_norm": [
                        metrics(c)["auc"] for c in scores["level_norm"].T
                    ],
                    "band_loss": band_losses(detector, X_fit, bands, seed),
                    "seconds": time.perf_counter() - start,
                }
            )
            logger.info(
                "ped2 %s seed %d: micro AUC full %.4f focus %.4f (%.1f s)",
                variant.name,
                seed,
                records[-1]["full"]["auc"],
                records[-1]["focus"]["auc"],
                records[-1]["seconds"],
            )


def summarise(records: list[dict], variants: list[Variant]) -> dict:
    """Intervals per data set and variant, paired tests against sigma2, win counts."""
    datasets = sorted({r["dataset"] for r in records})
    summary: dict = {"datasets": {}, "across_datasets": {}}
    names = [v.name for v in variants]
    reuse = {v.name: "gaussian" for v in variants if v.name == "gaussian-0.33-0.075"}
    for dataset in datasets:
        rows = [r for r in records if r["dataset"] == dataset]
        entry: dict = {"variants": {}, "baselines": {}, "vs_sigma2": {}}
        for method in sorted({r["variant"] for r in rows if r["kind"] == "baseline"}):
            entry["baselines"][method] = interval(
                [r["full"]["auc"] for r in rows if r["variant"] == method]
            )
        keyed = {
            name: {
                (r["seed"], r["split"]): r
                for r in rows
                if r["variant"] == reuse.get(name, name)
            }
            for name in names
        }
        for name in names:
            runs = list(keyed[name].values())
            if not runs:
                continue
            entry["variants"][name] = {
                evaluation: interval([r[evaluation]["auc"] for r in runs])
                for evaluation in ("full", "focus")
            }
            entry["variants"][name]["level_auc_energy"] = np.mean(
                [r["level_auc_energy"] for r in runs], axis=0
            ).tolist()
            entry["variants"][name]["level_auc_norm"] = np.mean(
                [r["level_auc_norm"] for r in runs], axis=0
            ).tolist()
            entry["variants"][name]["band_loss"] = np.mean(
                [r["band_loss"] for r in runs], axis=0
            ).tolist()
            if name != "sigma2":
                pairs = sorted(set(keyed[name]) & set(keyed["sigma2"]))
                entry["vs_sigma2"][name] = {
                    evaluation: paired_comparison(
                        [keyed[name][p][evaluation]["auc"] for p in pairs],
                        [keyed["sigma2"][p][evaluation]["auc"] for p in pairs],
                    )
                    for evaluation in ("full", "focus")
                }
        summary["datasets"][dataset] = entry
    for name in names:
        if name == "sigma2":
            continue
        for evaluation in ("full", "focus"):
            counts = {"win": 0, "tie": 0, "loss": 0}
            for entry in summary["datasets"].values():
                if name in entry["vs_sigma2"]:
                    counts[outcome(entry["vs_sigma2"][name][evaluation])] += 1
            summary["across_datasets"].setdefault(name, {})[evaluation] = counts
    return summary


# The settings that make two studies comparable. The data paths and the number of
# data sets may differ between a study and the run that resumes it.
PROTOCOL_KEYS = (
    "splits",
    "train_share",
    "main_seeds",
    "sweep_seeds",
    "detector",
    "steps",
    "ped2_steps",
    "baselines",
)


def load_finished(path: Path, config: StudyConfig, variants: list[Variant]):
    """Records and seconds of an earlier study.json run with the same protocol.

    Raises ValueError naming the file and the first setting that differs, since
    records of another protocol would mix incomparable numbers.
    """
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        earlier_config, records = earlier["config"], earlier["records"]
        earlier_variants = earlier["variants"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a study.json that can be resumed ({error}); "
            "choose another --out or run without --resume."
        ) from None
    current = asdict(config)
    for key in PROTOCOL_KEYS:
        if earlier_config.get(key) != current[key]:
            raise ValueError(
                f"{path} was written with {key}={earlier_config.get(key)!r}, "
                f"this study has {key}={current[key]!r}; resume only with the "
                "same settings, or choose another --out."
            )
    if earlier_variants != [asdict(v) for v in variants]:
        raise ValueError(
            f"{path} was written with other variants; choose another --out."
        )
    return records, float(earlier.get("seconds", 0.0))


def run_study(
    config: StudyConfig,
    out: Path,
    variants: list[Variant] | None = None,
    resume: bool = False,
    merge: list[Path] | tuple[Path, ...] = (),
) -> dict:
    """Run the study and write study.json, report.md and report.html to ``out``.

    With ``resume``, the data sets already in ``out/study.json`` are kept and
    skipped, provided that file was written with the same protocol. ``merge``
    names more study.json files of the same protocol, for example from studies
    of other data sets run side by side. Their data sets are kept and skipped
    too.
    """
    from mulde.study_report import write_study_report

    if config.adbench_dir is None and config.ped2_root is None:
        raise ValueError("The study needs an ADBench folder, a Ped2 root, or both.")
    if variants is None:
        variants = default_variants(config.main_seeds, config.sweep_seeds)
    full_levels = np.linspace(1e-3, 1.0, config.detector["n_levels"])
    bands = np.geomspace(1e-3, 1.0, 13)
    records: list[dict] = []
    earlier_seconds = 0.0
    out = Path(out)
    if resume and (out / "study.json").exists():
        records, earlier_seconds = load_finished(out / "study.json", config, variants)
    for path in merge:
        more, seconds = load_finished(Path(path), config, variants)
        known = {r["dataset"] for r in records}
        records += [r for r in more if r["dataset"] not in known]
        earlier_seconds += seconds
    finished = {r["dataset"] for r in records}
    if finished:
        logger.info("resuming: keeping %s", ", ".join(sorted(finished)))
    start = time.perf_counter() - earlier_seconds
    out.mkdir(parents=True, exist_ok=True)

    def write(complete: bool) -> dict:
        result = {
            "config": asdict(config),
            "variants": [asdict(v) for v in variants],
            "levels": full_levels.tolist(),
            "bands": bands.tolist(),
            "records": records,
            "summary": summarise(records, variants),
            "seconds": time.perf_counter() - start,
            "complete": complete,
        }
        text = json.dumps(result, indent=1)
        atomic_write(
            out / "study.json", lambda path: path.write_text(text, encoding="utf-8")
        )
        write_study_report(out, result)
        return result

    # Results are written after each data set, so a long study that is stopped
    # keeps every finished data set; "complete" tells whether all of them ran.
    if config.ped2_root is not None and "ped2" not in finished:
        study_ped2(variants, config, records, bands)
        write(complete=False)
    if config.adbench_dir is not None:
        sets = load_adbench(Path(config.adbench_dir))
        # Smallest sets first, so that a stopped study covers the most sets.
        names = sorted(sets, key=lambda name: sets[name][0].size)
        for name in names[: config.max_datasets]:
            if name in finished:
                continue
            X, y = sets[name]
            study_tabular(name, X, y, variants, config, records, bands)
            write(complete=False)
    return write(complete=True)


# ------------------------------------------------------------------------ CLI


def add_study_parser(subparsers) -> None:
    import argparse

    parser = subparsers.add_parser(
        "study",
        help="compare the sigma2 and gaussian weightings on ADBench sets and Ped2",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--adbench", help="folder of ADBench .npz files (X, y)")
    parser.add_argument(
        "--ped2",
        help="Ped2 root; its object-mode features (float32 backbone, DIS "
        "ultrafast flow) are read from the feature cache, or extracted into it",
    )
    parser.add_argument(
        "--cache-dir", help="feature cache folder (default: the main job's)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--splits",
        type=int,
        help="one-class splits per set (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="optimiser steps per fit (default 400; 30 with --quick)",
    )
    parser.add_argument(
        "--max-datasets", type=int, help="use only the N smallest ADBench sets"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny network, 1 split, 2+1 seeds: a smoke run",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the data sets already in OUT/study.json and run the rest; "
        "the settings must match those of that file",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="STUDY_JSON",
        help="also keep the data sets of these study.json files, written with the "
        "same settings (for studies run side by side)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors"
    )


def _check_counts(args) -> None:
    for name in ("splits", "steps", "max_datasets"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} must be at least 1.")


def study_command(args) -> int:
    _check_counts(args)
    import torch

    # The study runs many fits of a small network, whose matrix products are too
    # small to gain from a second thread; on a busy machine two threads per
    # process run about ten times slower than one.
    torch.set_num_threads(1)
    overrides = {
        "adbench_dir": args.adbench,
        "ped2_root": args.ped2,
        "ped2_cache_dir": args.cache_dir,
        "max_datasets": args.max_datasets,
    }
    # --splits and --steps default to None, so that --quick keeps its own small
    # values unless they are given.
    counts = {
        name: getattr(args, name)
        for name in ("splits", "steps")
        if getattr(args, name) is not None
    }
    if args.quick:
        config = StudyConfig.quick(**overrides, **counts)
    else:
        config = StudyConfig(**overrides, **counts)
    result = run_study(
        config, Path(args.out), resume=args.resume, merge=[Path(m) for m in args.merge]
    )
    across = result["summary"]["across_datasets"].get("gaussian", {})
    print(f"study written to {args.out}")
    print(f"gaussian against sigma2, full grid: {across.get('full')}")
    return 0
