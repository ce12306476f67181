"""Plots, Markdown and HTML report of the weighting study."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mulde.noise import make_weighting  # noqa: E402
from mulde.persistence import atomic_write  # noqa: E402

MAIN = ("sigma2", "gaussian", "gaussian-is")


def _fmt(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    if entry.get("low") is None:
        return f"{entry['mean']:.4f}"
    text = f"{entry['mean']:.4f} [{entry['low']:.4f}, {entry['high']:.4f}]"
    # A 95% interval from two or three runs is mostly the t quantile's width.
    if entry.get("n", 0) < 4:
        text += f" (n = {entry['n']})"
    return text


def plot_weightings(path: Path, variants: list[dict]) -> None:
    sigma = torch.linspace(1e-3, 1.0, 2000, dtype=torch.float64)
    density = 1 / (sigma * math.log(1.0 / 1e-3))  # log-uniform p(sigma)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for variant in variants:
        if variant["importance_sampling"]:
            continue
        weighting = make_weighting(
            variant["weighting"], variant["sigma0"], variant["s"]
        )
        values = weighting(sigma)
        style = "-" if variant["name"] in MAIN else ":"
        left.plot(sigma, values, style, label=variant["name"])
        right.plot(
            sigma,
            density * values / (density * values).sum() / (sigma[1] - sigma[0]),
            style,
            label=variant["name"],
        )
    left.set_title("lambda(sigma)")
    right.set_title("p(sigma) lambda(sigma), normalised")
    for ax in (left, right):
        ax.set_xlabel("sigma")
    left.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def plot_auc_by_sigma(path: Path, result: dict) -> None:
    datasets = list(result["summary"]["datasets"])
    levels = np.asarray(result["levels"])
    columns = 4
    rows = math.ceil(len(datasets) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False
    )
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        for name, entry in result["summary"]["datasets"][dataset]["variants"].items():
            if name not in MAIN:
                continue
            values = np.asarray(entry["level_auc_energy"])
            line = ax.plot(levels, values, label=name)[0]
            best = int(values.argmax())
            ax.plot(levels[best], values[best], "v", color=line.get_color())
        ax.axvspan(0.2, 0.5, color="grey", alpha=0.1)
        ax.set_title(dataset, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("sigma (grey band: [0.2, 0.5]); triangle = best level")
    figure.supylabel("AUC of the energy at this level alone")
    figure.tight_layout()
    figure.savefig(path, dpi=90, format="png")
    plt.close(figure)


def plot_bars(path: Path, result: dict) -> None:
    datasets = list(result["summary"]["datasets"])
    figure, ax = plt.subplots(figsize=(max(6, 1.1 * len(datasets)), 3.8))
    width = 0.8 / len(MAIN)
    for k, name in enumerate(MAIN):
        means, errors = [], [[], []]
        for dataset in datasets:
            entry = (
                result["summary"]["datasets"][dataset]["variants"]
                .get(name, {})
                .get("full")
            )
            mean = entry["mean"] if entry else np.nan
            means.append(mean)
            low = entry["low"] if entry and entry["low"] is not None else mean
            high = entry["high"] if entry and entry["high"] is not None else mean
            errors[0].append(mean - low)
            errors[1].append(high - mean)
        ax.bar(
            np.arange(len(datasets)) + k * width,
            means,
            width,
            yerr=errors,
            label=name,
            capsize=2,
        )
    ax.set_xticks(
        np.arange(len(datasets)) + width, datasets, rotation=45, ha="right", fontsize=8
    )
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUC, full grid (95% interval)")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def plot_band_loss(path: Path, result: dict) -> None:
    bands = np.asarray(result["bands"])
    figure, ax = plt.subplots(figsize=(5.5, 3.5))
    for name in MAIN:
        curves = [
            entry["variants"][name]["band_loss"]
            for entry in result["summary"]["datasets"].values()
            if name in entry["variants"]
        ]
        if curves:
            ax.semilogx(
                bands, np.mean(curves, axis=0), marker="o", markersize=3, label=name
            )
    ax.set_xlabel("sigma")
    ax.set_ylabel("denoising error per dimension")
    ax.set_title("Training-data loss by sigma band, mean over data sets")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def overview_table(result: dict) -> str:
    """One row per data set: the main variants, their paired differences, best sigma.

    Differences are on the full grid, against sigma2 over the same (seed, split)
    pairs, with the outcome of :func:`mulde.study.outcome` in brackets.
    """
    from mulde.study import outcome

    levels = result["levels"]
    lines = [
        "| data set | sigma2 | gaussian | gaussian - sigma2 | gaussian-is - sigma2 "
        "| best sigma: sigma2 | best sigma: gaussian |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def difference(entry: dict, name: str) -> str:
        comparison = entry["vs_sigma2"].get(name, {}).get("full")
        if comparison is None or comparison["low"] is None:
            return "n/a"
        return (
            f"{comparison['mean_difference']:+.3f} [{comparison['low']:+.3f}, "
            f"{comparison['high']:+.3f}] {outcome(comparison)}"
        )

    def best(entry: dict, name: str) -> str:
        values = entry["variants"].get(name)
        if values is None:
            return "n/a"
        auc = values["level_auc_energy"]
        return f"{levels[int(np.argmax(auc))]:.3f}"

    for dataset, entry in result["summary"]["datasets"].items():
        variants = entry["variants"]
        cells = [
            f"{variants[name]['full']['mean']:.3f}" if name in variants else "n/a"
            for name in ("sigma2", "gaussian")
        ]
        lines.append(
            f"| {dataset} | {cells[0]} | {cells[1]} | {difference(entry, 'gaussian')} "
            f"| {difference(entry, 'gaussian-is')} | {best(entry, 'sigma2')} "
            f"| {best(entry, 'gaussian')} |"
        )
    return "\n".join(lines) + "\n"


def video_table(result: dict) -> str:
    """Micro AUC, macro AUC and AP per variant, for data sets scored per frame.

    Returns "" when no record has a macro AUC, as for tabular data sets.
    """
    from mulde.study import interval

    lines = []
    for dataset in sorted({r["dataset"] for r in result["records"]}):
        rows = [
            r
            for r in result["records"]
            if r["dataset"] == dataset and "macro_auc" in r.get("full", {})
        ]
        if not rows:
            continue
        lines += [
            f"### {dataset}: frame metrics on the full grid",
            "",
            "| variant | micro AUC | macro AUC | average precision |",
            "| --- | --- | --- | --- |",
        ]
        for name in dict.fromkeys(r["variant"] for r in rows):
            runs = [r["full"] for r in rows if r["variant"] == name]
            cells = [
                _fmt(interval([run[key] for run in runs]))
                for key in ("auc", "macro_auc", "average_precision")
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


def markdown_tables(result: dict) -> str:
    lines = ["### Overview (AUC on the full grid)", "", overview_table(result)]
    lines.append(video_table(result))
    for dataset, entry in result["summary"]["datasets"].items():
        lines += [
            f"### {dataset}",
            "",
            "| variant | AUC full grid | AUC focus grid | best level (sigma) |",
            "| --- | --- | --- | --- |",
        ]
        levels = result["levels"]
        for name, values in entry["variants"].items():
            best = int(np.argmax(values["level_auc_energy"]))
            lines.append(
                f"| {name} | {_fmt(values['full'])} | {_fmt(values['focus'])} | "
                f"{levels[best]:.3f} ({values['level_auc_energy'][best]:.4f}) |"
            )
        for name, values in entry["baselines"].items():
            lines.append(f"| {name} (baseline) | {_fmt(values)} | | |")
        lines += [
            "",
            "| vs sigma2 | grid | mean difference [95% bootstrap] | d_z | Wilcoxon p |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, comparisons in entry["vs_sigma2"].items():
            for grid, c in comparisons.items():
                dz = (
                    "n/a"
                    if c["effect_size_dz"] is None
                    else f"{c['effect_size_dz']:.2f}"
                )
                p = "n/a" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
                lines.append(
                    f"| {name} | {grid} | {c['mean_difference']:+.4f} "
                    f"[{c['low']:+.4f}, {c['high']:+.4f}] | {dz} | {p} |"
                )
        lines.append("")
    lines += [
        "### Across data sets (win / tie / loss against sigma2)",
        "",
        "| variant | full grid | focus grid |",
        "| --- | --- | --- |",
    ]
    for name, counts in result["summary"]["across_datasets"].items():
        cells = [f"{c['win']} / {c['tie']} / {c['loss']}" for c in counts.values()]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def write_study_report(folder: Path, result: dict) -> None:
    plots = {
        "weightings.png": plot_weightings,
        "auc_by_sigma.png": plot_auc_by_sigma,
        "auc_bars.png": plot_bars,
        "band_loss.png": plot_band_loss,
    }
    # Every file goes through a temporary file, so that a study stopped while
    # writing its report leaves each file whole, old or new.
    for name, plot in plots.items():
        argument = result["variants"] if plot is plot_weightings else result
        atomic_write(
            folder / name,
            lambda path, plot=plot, argument=argument: plot(path, argument),
        )
    tables = markdown_tables(result)
    markdown = (
        "# Weighting study\n\n"
        f"{len(result['records'])} records, {result['seconds']:.0f} s.\n\n"
        + "".join(f"![{name}]({name})\n\n" for name in plots)
        + tables
    )
    atomic_write(
        folder / "report.md", lambda path: path.write_text(markdown, encoding="utf-8")
    )
    images = "".join(
        f"<h2>{html.escape(name)}</h2>"
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode((folder / name).read_bytes()).decode("ascii")}">'
        for name in plots
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>mulde weighting study</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "img{max-width:100%}</style></head><body><h1>Weighting study</h1>"
        f"{images}<h2>Tables</h2><pre>{html.escape(tables)}</pre></body></html>"
    )
    atomic_write(
        folder / "report.html", lambda path: path.write_text(page, encoding="utf-8")
    )
