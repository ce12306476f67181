"""Save and load fitted detectors as one safetensors file.

The file holds tensors only (network weights, standardisation, evaluation levels,
mixture arrays, training scores) and a JSON header in the safetensors metadata
(constructor parameters, fitted scalars, library and format versions). Loading
parses JSON and raw arrays, so it executes nothing from the file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mulde.aggregate import LevelAggregator
from mulde.network import EnergyMLP, resolve_device, resolve_precision

FORMAT = "mulde-detector"
FORMAT_VERSION = 1


def atomic_write(path: Path, write) -> Path:
    """Call ``write(temporary_path)``, then rename the result onto ``path``.

    A failure leaves no file at ``path`` and no temporary file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        # mkstemp creates the file readable by its owner only; give the result
        # the permissions of any other new file.
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def check_file_target(path: Path, description: str, remedy: str) -> None:
    """Raise unless a file can be created at ``path``.

    IsADirectoryError when ``path`` is a folder, NotADirectoryError when one of
    its parent paths is a file. ``description`` names what is written, and
    ``remedy`` tells the user what to do about a folder at ``path``.
    """
    if path.is_dir():
        raise IsADirectoryError(
            f"Cannot write {description} to {path}: it is a folder; {remedy}."
        )
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise NotADirectoryError(
            f"Cannot write {description} to {path}: {blocking} is a file, not a "
            "folder; choose another path."
        )


def default_file_mode() -> int:
    """Return the permission bits that a new file gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _json_scalar(value):
    """Convert numpy scalars and arrays, which json cannot encode, to Python."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be saved in a model file")


def save_detector(detector, path: Path) -> Path:
    """Write a fitted :class:`mulde.MULDE` to ``path``, usually ``*.safetensors``."""
    from mulde import __version__

    if not hasattr(detector, "aggregator_"):
        raise RuntimeError("Only a fitted detector can be saved; call fit(X) first.")
    check_file_target(
        path,
        "the detector",
        f"give the path of a file, such as {path.parent / 'detector.safetensors'}",
    )
    params = detector.get_params()
    if callable(params["weighting"]):
        raise ValueError(
            "A detector with a callable weighting cannot be saved, since code is "
            "never stored in model files; use weighting='sigma2' or 'gaussian'."
        )
    params["hidden_sizes"] = [int(w) for w in params["hidden_sizes"]]
    if not isinstance(params["level_grid"], str):
        params["level_grid"] = [float(v) for v in params["level_grid"]]

    tensors = {
        f"network.{name}": value.detach().cpu().contiguous()
        for name, value in detector.network_.state_dict().items()
    }
    arrays = {
        "mean": detector.mean_,
        "scale": detector.scale_,
        "levels": detector.levels_,
        "decision_scores": detector.decision_scores_,
    } | {f"aggregator.{k}": v for k, v in detector.aggregator_.state().items()}
    for name, array in arrays.items():
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array))

    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mulde_version": __version__,
        "params": params,
        "fitted": {
            "n_features_in": int(detector.n_features_in_),
            "seed": int(detector.seed_),
            "threshold": float(detector.threshold_),
            "history": detector.history_,
        },
    }
    if hasattr(detector, "feature_names_in_"):
        header["fitted"]["feature_names"] = [str(n) for n in detector.feature_names_in_]
    metadata = {"mulde": json.dumps(header, default=_json_scalar)}
    return atomic_write(
        path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata)
    )


def read_safetensors(
    path: Path, framework: str, remedy: str
) -> tuple[dict[str, str], dict]:
    """Read the metadata and every array of a safetensors file.

    ``framework`` is safetensors' "pt" or "numpy". A file that safetensors
    cannot parse raises ValueError naming it, with ``remedy`` as the advice.
    """
    try:
        with safe_open(str(path), framework=framework, device="cpu") as reader:
            metadata = reader.metadata() or {}
            arrays = {key: reader.get_tensor(key) for key in reader.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"Model file {path} is not a readable safetensors file ({error}); it is "
            f"corrupt or truncated. {remedy}"
        ) from error
    return metadata, arrays


def load_detector(path: Path, device: str = "auto"):
    """Read a detector written by :func:`save_detector`."""
    from mulde.detector import MULDE

    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    metadata, tensors = read_safetensors(
        path, "pt", "Save the detector again with MULDE.save."
    )

    try:
        header = json.loads(metadata["mulde"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(
            f"Model file {path} has no mulde header; it was not written by MULDE.save."
        ) from error
    if not isinstance(header, dict):
        raise ValueError(
            f"Model file {path} has a damaged mulde header (a JSON "
            f"{type(header).__name__}, not an object); save the detector again "
            "with MULDE.save."
        )
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"Model file {path} has format {header.get('format')!r} version "
            f"{header.get('format_version')!r}, written by mulde "
            f"{header.get('mulde_version')}; this mulde reads {FORMAT!r} version "
            f"{FORMAT_VERSION}. Refit and save the detector with this version."
        )

    # A device that this machine lacks is no fault of the file, so it is
    # checked apart from the header.
    try:
        resolved_device = resolve_device(device)
    except ValueError as error:
        raise ValueError(
            f"Cannot load {path} on device {device!r}: {error} Pass device='cpu', "
            "or 'auto' to take CUDA only where it is available."
        ) from error

    try:
        params = header["params"]
        params["device"] = device
        fitted = header["fitted"]
        detector = MULDE(**params)
        detector._check_params()
        detector.n_features_in_ = fitted["n_features_in"]
        detector.seed_ = fitted["seed"]
        detector.threshold_ = fitted["threshold"]
        detector.history_ = fitted["history"]
        names = fitted.get("feature_names")
        if names is not None:
            if not (
                isinstance(names, list)
                and len(names) == detector.n_features_in_
                and all(isinstance(name, str) for name in names)
            ):
                raise ValueError(
                    f"feature_names must be {detector.n_features_in_} strings, got "
                    f"{names!r}"
                )
            detector.feature_names_in_ = np.asarray(names, dtype=object)
        detector.device_ = resolved_device
        detector.compute_dtype_ = resolve_precision(
            detector.precision, detector.device_
        )
        detector.mean_ = tensors.pop("mean").numpy()
        detector.scale_ = tensors.pop("scale").numpy()
        detector.levels_ = tensors.pop("levels").numpy()
        detector.decision_scores_ = tensors.pop("decision_scores").numpy()
        detector.labels_ = (detector.decision_scores_ > detector.threshold_).astype(int)
        _check_loaded_arrays(detector)

        network = EnergyMLP(
            detector.n_features_in_,
            params["hidden_sizes"],
            params["activation"],
            params["layer_norm"],
            params["dropout"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"Model file {path} has a damaged mulde header or arrays "
            f"({type(error).__name__}: {error}); save the detector again with "
            "MULDE.save."
        ) from error
    state = {
        k.removeprefix("network."): v
        for k, v in tensors.items()
        if k.startswith("network.")
    }
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"Model file {path} has network weights that do not match its own "
            f"configuration ({error}); the file is corrupt."
        ) from error
    damaged = [name for name, values in state.items() if not values.isfinite().all()]
    if damaged:
        raise ValueError(
            f"Model file {path} has NaN or infinite network weights in "
            f"{', '.join(damaged[:3])}; the file is corrupt. Save the detector "
            "again with MULDE.save."
        )
    detector.network_ = network.to(detector.device_).eval()

    aggregator_arrays = {
        k.removeprefix("aggregator."): v.numpy()
        for k, v in tensors.items()
        if k.startswith("aggregator.")
    }
    try:
        detector.aggregator_ = LevelAggregator(
            params["aggregation"],
            params["n_components"],
            params["reg_covar"],
            params["level_index"],
            random_state=fitted["seed"],
        ).load_state(
            aggregator_arrays,
            len(detector.levels_) * (2 if params["use_score_norms"] else 1),
        )
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"Model file {path} has damaged aggregator arrays "
            f"({type(error).__name__}: {error}); save the detector again with "
            "MULDE.save."
        ) from error
    return detector


def _check_loaded_arrays(detector) -> None:
    """Raise ValueError if the standardisation or levels contradict the header."""
    n_features = detector.n_features_in_
    for name, values in (("mean", detector.mean_), ("scale", detector.scale_)):
        if values.shape != (n_features,) or not np.isfinite(values).all():
            raise ValueError(
                f"{name} has shape {values.shape} or non-finite values, expected "
                f"{n_features} finite values"
            )
    if not (detector.scale_ > 0).all():
        raise ValueError("scale has values <= 0")
    grid = detector.level_grid
    n_levels = detector.n_levels if isinstance(grid, str) else len(grid)
    levels = detector.levels_
    if levels.shape != (n_levels,) or not (np.isfinite(levels) & (levels > 0)).all():
        raise ValueError(
            f"levels has shape {levels.shape} or values <= 0, expected {n_levels} "
            "positive levels"
        )
    if not math.isfinite(detector.threshold_):
        raise ValueError(f"threshold {detector.threshold_} is not finite")
