"""Plots and the HTML report of a run."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mulde.evaluation import roc_points  # noqa: E402


def plot_roc(
    path: Path, raw: dict, smoothed: dict, labels: dict, metrics: dict
) -> None:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    for name, scores, value in [
        ("unsmoothed", raw, metrics["unsmoothed"]["micro_auc"]),
        ("smoothed", smoothed, metrics["smoothed"]["micro_auc"]),
    ]:
        fpr, tpr = roc_points(scores, labels)
        axes.plot(fpr, tpr, label=f"{name} (AUC {value:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("Frame-level ROC, all test frames")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_clips(
    path: Path,
    raw: dict,
    smoothed: dict,
    labels: dict,
    clip_auc: dict | None = None,
) -> None:
    """Plot each test clip's score over time with its anomalous frames shaded.

    ``clip_auc`` maps clips to the AUC shown in their titles; clips without one
    (all frames of one class) show only their name.
    """
    clip_auc = clip_auc or {}
    clips = list(labels)
    columns = 3
    rows = math.ceil(len(clips) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 2.2 * rows), squeeze=False
    )
    for ax, clip in zip(axes.flat, clips, strict=False):
        frames = np.arange(len(labels[clip]))
        anomalous = np.asarray(labels[clip]).astype(bool)
        low = min(raw[clip].min(), smoothed[clip].min())
        high = max(raw[clip].max(), smoothed[clip].max())
        ax.fill_between(
            frames,
            low,
            high,
            where=anomalous,
            color="tab:red",
            alpha=0.2,
            step="mid",
            linewidth=0,
        )
        ax.plot(frames, raw[clip], color="tab:grey", linewidth=0.7)
        ax.plot(frames, smoothed[clip], color="tab:blue", linewidth=1.2)
        title = clip if clip not in clip_auc else f"{clip}, AUC {clip_auc[clip]:.3f}"
        # Clip names come from file names: "$" must not start matplotlib maths.
        ax.set_title(title, fontsize=9, parse_math=False)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(clips) :]:
        ax.axis("off")
    figure.supxlabel("frame")
    figure.supylabel(
        "anomaly score, own scale per clip\n(grey raw, blue smoothed; "
        "shaded = anomalous frames)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_auc_by_level(
    path: Path,
    curve: dict,
    weighting_note: str = "",
    combined: dict | None = None,
) -> None:
    """Plot the micro AUC of each level alone against sigma.

    ``combined`` maps "unsmoothed" and "smoothed" to the micro AUC of the run's
    score over all levels, drawn as dashed lines of the same colours.
    """
    sigma = np.asarray(curve["sigma"])
    figure, axes = plt.subplots(figsize=(5.5, 3.5))
    for key, label in [("micro_auc", "unsmoothed"), ("micro_auc_smoothed", "smoothed")]:
        values = np.asarray(curve[key])
        line = axes.plot(sigma, values, marker="o", markersize=3, label=label)[0]
        reference = (combined or {}).get(label)
        if reference is not None:
            axes.axhline(
                reference,
                color=line.get_color(),
                linestyle="--",
                linewidth=1,
                label=f"{label}, all levels: {reference:.3f}",
            )
        best = int(values.argmax())
        axes.annotate(
            f"{values[best]:.3f}",
            (sigma[best], values[best]),
            fontsize=8,
            textcoords="offset points",
            xytext=(0, 5),
            ha="center",
        )
    axes.set_xlabel("noise level sigma (standard deviations)")
    axes.set_ylabel("frame micro AUC of this level alone")
    axes.set_title("AUC against sigma" + weighting_note)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _metric_rows(metrics: dict) -> str:
    rows = []
    for name in ("micro_auc", "macro_auc", "average_precision"):
        cells = []
        for variant in ("unsmoothed", "smoothed"):
            value = metrics[variant][name]
            cells.append("n/a" if value is None else f"{value:.4f}")
        rows.append(f"<tr><th>{name}</th><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    return "\n".join(rows)


def write_report(
    folder: Path, metrics: dict, raw: dict, smoothed: dict, labels: dict, config: dict
) -> Path:
    """Write the three plots and report.html into ``folder``."""
    plot_roc(folder / "roc.png", raw, smoothed, labels, metrics)
    clip_auc = metrics.get("smoothed", {}).get("clip_auc", {})
    plot_clips(folder / "clip_scores.png", raw, smoothed, labels, clip_auc)
    plot_auc_by_level(
        folder / "auc_by_sigma.png",
        metrics["auc_by_level"],
        combined={
            variant: metrics[variant]["micro_auc"]
            for variant in ("unsmoothed", "smoothed")
        },
    )
    aggregation = str(config.get("detector", {}).get("aggregation", "gmm"))
    environment = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in metrics.get("environment", {}).items()
    )

    clip_rows = "\n".join(
        f"<tr><th>{html.escape(clip)}</th>"
        f"<td>{metrics['unsmoothed']['clip_auc'][clip]:.4f}</td>"
        f"<td>{metrics['smoothed']['clip_auc'][clip]:.4f}</td></tr>"
        for clip in labels
        if clip in metrics["smoothed"]["clip_auc"]
    )
    counts = metrics["smoothed"]
    chance = counts["n_anomalous_frames"] / counts["n_frames"]
    single = metrics["smoothed"]["single_class_clips"]
    single_note = (
        f"<p>Clips with frames of one class only (left out of the macro AUC): "
        f"{html.escape(', '.join(single))}</p>"
        if single
        else ""
    )
    timings = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{v:.1f}</td></tr>"
        for k, v in metrics.get("timings_s", {}).items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>mulde run: {html.escape(str(metrics["dataset"]))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 75em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
img {{ max-width: 100%; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>mulde run on {html.escape(str(metrics["dataset"]))}</h1>
<p>Weighting <b>{html.escape(str(metrics["weighting"]))}</b>, seed {metrics["seed"]},
{counts["n_frames"]} test frames ({counts["n_anomalous_frames"]} anomalous).
Smoothing: Gaussian along time, sigma {metrics["smoothing_sigma_frames"]} frames, fixed
in the configuration.</p>
<h2>Frame-level metrics</h2>
<p>Micro AUC: one ROC curve over all test frames pooled. Macro AUC: the mean of
the per-clip AUCs. Average precision counts anomalous frames as positives; its
chance level is the anomalous share, {chance:.3f}.
Scores are anomaly scores without a unit: the negative log-likelihood, under the
detector, of a frame's most anomalous row, which is a grid cell, an object or the
frame itself, by feature mode.</p>
<table><tr><th></th><th>unsmoothed</th><th>smoothed</th></tr>
{_metric_rows(metrics)}
</table>
{single_note}
{_image(folder / "roc.png")}
<h2>Scores over time</h2>
{_image(folder / "clip_scores.png")}
<h2>AUC of each noise level alone</h2>
<p>Each point scores the frames with the energy at one noise level alone; the
dashed lines are the run's score over all levels ({html.escape(aggregation)}
aggregation). The curve reads the test labels, so it shows where the detector
separates normal from anomalous frames and must not be used to pick a level:
that would tune the method on its own test set. To score with one level, fix it
on validation data of your own and pass
<code>--aggregation level --level-index I</code>.</p>
{_image(folder / "auc_by_sigma.png")}
<h2>Per-clip AUC</h2>
<table><tr><th>clip</th><th>unsmoothed</th><th>smoothed</th></tr>
{clip_rows}
</table>
<h2>Time per stage (s)</h2>
<table>{timings}</table>
<p>The report stage and the total time are in metrics.json, which is written
after this page.</p>
<h2>Software and device</h2>
<table>{environment}</table>
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(config, indent=2))}</pre>
</body></html>
"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
