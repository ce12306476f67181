"""The typed configuration of the main job, the single source of its settings.

A run's configuration is built from defaults, then a JSON file (``--config``),
then command-line options, and saved as ``config.json`` beside its results.
Unknown keys are rejected at every level.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mulde.validation import check_field_types, check_known_keys

# Detector settings of the main job. The reference width (4096 x 4096) costs
# about 60 times more per sample than 512 x 512 and would not fit the 20-minute
# budget on 2 CPU cores. The learning rate was chosen by the loss on held-out
# normal training rows (validation_fraction), never by test labels.
VIDEO_DETECTOR_DEFAULTS: dict[str, Any] = {
    "hidden_sizes": [512, 512],
    "epochs": 20,
    "batch_size": 1024,
    "learning_rate": 1e-3,
    "beta": 0.1,
    "n_levels": 16,
    "level_grid": "linear",
    "aggregation": "gmm",
    "n_components": 1,
    "weighting": "sigma2",
}

SCORINGS = ("concat", "per_group")
MAX_SMOOTHING = 1000.0


@dataclass
class DatasetOptions:
    """Where the clips and labels are, and how many of them to use."""

    name: str = "ped2"
    root: str | None = None
    train_dir: str | None = None
    test_dir: str | None = None
    labels: str | None = None
    max_train_clips: int | None = None
    max_test_clips: int | None = None


@dataclass
class ScoringOptions:
    """How object or frame features become one score per frame."""

    # "concat": one detector on the concatenated groups; "per_group": one detector
    # per group, scores standardised on training data and summed.
    scoring: str = "concat"
    # Feature groups to score; None takes every group of the feature mode
    # (grid and object: velocity, appearance, geometry; frame: appearance, motion).
    groups: list[str] | None = None
    # Groups wider than this are reduced by PCA fitted on training rows only.
    pca_components: int | None = 64
    # Width of the Gaussian smoothing along time, in frames. Fixed in advance:
    # anomalies in the standard data sets last tens of frames, and 3 frames
    # removes single-frame noise while moving onsets by well under a second.
    smoothing_sigma: float = 3.0


@dataclass
class RunConfig:
    """Everything that determines a run of ``mulde run``."""

    dataset: DatasetOptions = field(default_factory=DatasetOptions)
    features: dict[str, Any] = field(default_factory=lambda: {"mode": "grid"})
    detector: dict[str, Any] = field(
        default_factory=lambda: dict(VIDEO_DETECTOR_DEFAULTS)
    )
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    seed: int = 0
    cache_dir: str | None = None
    verbose: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a configuration, rejecting unknown keys with the valid ones."""
        _check_keys("configuration", data, cls)
        config = cls()
        for key, value in data.items():
            if key == "dataset":
                _check_keys("dataset", value, DatasetOptions)
                config.dataset = DatasetOptions(**value)
            elif key == "scoring":
                _check_keys("scoring", value, ScoringOptions)
                config.scoring = ScoringOptions(**value)
            elif key == "detector":
                config.detector = dict(VIDEO_DETECTOR_DEFAULTS) | _detector_options(
                    value
                )
            elif key == "features":
                if not isinstance(value, dict):
                    raise ValueError(
                        f"The features section must be a JSON object such as "
                        f'{{"mode": "grid"}}, not {value!r}.'
                    )
                config.features = dict(value)
            else:
                setattr(config, key, value)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: Path) -> RunConfig:
        try:
            # "utf-8-sig" also accepts the byte order mark that some Windows
            # editors write.
            data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"Configuration file {path} does not exist."
            ) from error
        except (json.JSONDecodeError, RecursionError) as error:
            # RecursionError: objects nested thousands deep.
            raise ValueError(
                f"Configuration file {path} is not valid JSON: {error}"
            ) from error
        except UnicodeDecodeError as error:
            raise ValueError(
                f"Configuration file {path} is not UTF-8 text ({error.reason} at "
                f"byte {error.start}); save it as UTF-8."
            ) from error
        except IsADirectoryError as error:
            raise ValueError(
                f"Configuration file {path} is a folder; give the JSON file."
            ) from error
        if not isinstance(data, dict):
            raise ValueError(f"Configuration file {path} must contain a JSON object.")
        return cls.from_dict(data)

    def validate(self) -> None:
        check_field_types(self.dataset, "dataset.")
        check_field_types(self.scoring, "scoring.")
        check_field_types(self)
        # Every type is checked now, so the checks below are of values only.
        from mulde.video.datasets import DATASETS

        if self.dataset.name.lower() not in DATASETS:
            raise ValueError(
                f"Unknown dataset.name {self.dataset.name!r}; use one of "
                f"{', '.join(DATASETS)}."
            )
        if self.scoring.scoring not in SCORINGS:
            raise ValueError(
                f"Unknown scoring {self.scoring.scoring!r}; use one of "
                f"{', '.join(SCORINGS)}."
            )
        if self.scoring.smoothing_sigma < 0:
            raise ValueError(
                f"smoothing_sigma={self.scoring.smoothing_sigma} must be >= 0 frames."
            )
        if self.scoring.pca_components is not None and self.scoring.pca_components < 1:
            raise ValueError(
                f"pca_components={self.scoring.pca_components} must be >= 1 or null."
            )
        sigma = self.scoring.smoothing_sigma
        if not math.isfinite(sigma):
            raise ValueError(
                f"smoothing_sigma={sigma!r} must be a finite number of frames."
            )
        if sigma > MAX_SMOOTHING:
            raise ValueError(
                f"smoothing_sigma={sigma} frames is longer than any clip is likely to "
                f"be; use at most {MAX_SMOOTHING}."
            )
        groups = self.scoring.groups
        if groups is not None and not groups:
            raise ValueError(
                f"scoring.groups={groups!r} must be a non-empty list of feature group "
                "names, or null for all groups of the feature mode."
            )
        if groups is not None and len(set(groups)) != len(groups):
            raise ValueError(
                f"scoring.groups={groups!r} names a group more than once; list each "
                "group once."
            )
        for name in ("max_train_clips", "max_test_clips"):
            value = getattr(self.dataset, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"dataset.{name}={value!r} must be a positive integer or null."
                )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed!r} must be an integer in [0, 2**32).")
        from mulde.features import FeatureConfig

        # Check the feature settings now too, before any clip is read.
        FeatureConfig.from_dict(self.features)
        mode_groups = self.mode_groups()
        unknown = [g for g in self.feature_groups() if g not in mode_groups]
        if unknown:
            raise ValueError(
                f"scoring.groups has {unknown}, which feature mode "
                f"{self.features.get('mode', 'grid')!r} does not produce; its "
                f"groups are {mode_groups}."
            )
        options = _detector_options(self.detector)
        from mulde import MULDE

        # Check the detector settings now, before hours of feature extraction.
        MULDE(**options, random_state=self.seed)._check_params()

    def resolve_defaults(self) -> None:
        """Write out every feature setting and the scored groups, defaults included.

        config.json and ``--dry-run`` then show what a run uses, and a saved
        configuration reruns the same features even if defaults change.
        """
        from mulde.features import FeatureConfig

        self.features = FeatureConfig.from_dict(self.features).to_dict()
        self.scoring.groups = self.feature_groups()

    def feature_groups(self) -> list[str]:
        """The groups to score: as configured, or all groups of the feature mode."""
        if self.scoring.groups is not None:
            return list(self.scoring.groups)
        return self.mode_groups()

    def mode_groups(self) -> list[str]:
        """Return every group that the configured feature mode produces."""
        if self.features.get("mode", "grid") == "frame":
            return ["appearance", "motion"]
        return ["velocity", "appearance", "geometry"]


def _check_keys(section: str, data: Any, cls) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"The {section} section must be a JSON object, not {data!r}.")
    check_known_keys(section, data, [f.name for f in dataclasses.fields(cls)])


def _detector_options(options: Any) -> dict[str, Any]:
    from mulde import MULDE

    if not isinstance(options, dict):
        raise ValueError(
            f"The detector section must be a JSON object, not {options!r}."
        )
    valid = [k for k in MULDE().get_params() if k not in ("random_state", "verbose")]
    check_known_keys("detector", options, valid)
    return dict(options)
