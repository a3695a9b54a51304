"""The HTML report of a run (`tvclean report`): RUN/report/index.html, one self-contained file.

Sections: a summary table, per-class histograms of the decision scores
with the threshold, a t-SNE map of the features, thumbnails of the most negative
and most positive images per class, and the convergence of the Monte-Carlo
estimates. Plots and thumbnails are embedded as base64 data URIs, so the page
works offline and can be sent as one file; the plots are also written next to it
as PNG files. Every file and class name is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from .. import __version__
from ..atomicfile import atomic_write_bytes, atomic_write_text, read_json
from ..config import Config, ReportConfig
from ..engine.estimates import Estimates
from ..engine.posterior import label_probability
from ..errors import TvcleanError
from ..io.images import DEFAULT_MAX_PIXELS, open_image, to_rgb_or_l
from ..progress import Progress
from ..review.queue import decision_margin
from ..rundir import FeatureSet, RunDir, load_estimates, load_features, read_training_values
from ..rundir.estimates import estimate_meta
from ..rundir.features import check_inputs_outside
from ..rundir.tables import DECISIONS, TrainingValues

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

THUMBNAIL_PIXELS = 112  # longest side of a thumbnail
EMBEDDING_SEED = 0  # the t-SNE sample and layout are the same on every run
PNG_LIMIT = 8192  # thumbnails larger than this as PNG are embedded as JPEG
CLEAN_COLOUR, DIRTY_COLOUR = "#2e9d52", "#d6453d"


@dataclass
class ReportData:
    """Everything the report shows, read from a run (arrays aligned with train_index.csv)."""

    run: RunDir
    features: FeatureSet
    estimates: Estimates
    estimate_meta: dict
    values: np.ndarray  # (n,) float64 decision score, NaN where unreadable
    decisions: np.ndarray  # (n,) str: "clean", "dirty" (outliers too), "relabel" or "error"
    labels: np.ndarray  # (n,) int64 given label
    paths: list[str]  # absolute
    suggested: list[str]  # suggested class name, "" if none
    table: TrainingValues
    threshold: float
    timings: dict[str, float]
    method: str = "posterior"  # filter.method of the decisions

    @property
    def class_names(self) -> list[str]:
        return self.features.class_names


@dataclass
class Section:
    anchor: str
    heading: str
    body: str  # HTML


def write_report(run: str | Path | RunDir,
                 config: Config | Mapping[str, Mapping[str, Any]] | None = None,
                 progress: bool | None = None) -> Path:
    """Write RUN/report/index.html (plus its plots as PNG files); return its path.

    config: a Config, or {section: {option: value}} overrides of the run's
    config.toml (the [report] table: embedding_sample, thumbnails); progress:
    draw a progress bar on stderr (default: when stderr is a terminal).
    """
    run = RunDir.of(run)
    check_inputs_outside(run)
    run.require_stages("extract", "estimate", "filter")
    with run.writing("report"):
        full = run.resolve(config)
        path = _write_report(run, full.report, progress)
        run.save_config(full, ["report"])
        return path


def _write_report(run: RunDir, config: ReportConfig, progress: bool | None) -> Path:
    started = time.perf_counter()
    data = load_report_data(run)
    builders = (summary_section, histogram_section, borderline_section, embedding_section,
                thumbnail_section, unreadable_section, convergence_section)
    sections = []
    with Progress(len(builders), "report: sections", enabled=progress) as bar:
        for build in builders:
            sections.append(build(data, config))
            bar.update()
    path = run.report / "index.html"
    atomic_write_text(path, render_page(f"tvclean report: {run.root}", sections))
    seconds = time.perf_counter() - started
    run.log(f"report: {path}, {seconds:.2f}s")
    run.record_stage("report", seconds)
    return path


# --- reading the run ----------------------------------------------------------------------


def load_report_data(run: RunDir) -> ReportData:
    """Read features, estimates and training_values.csv; fail naming the stage to run."""
    features = load_features(run)
    estimates = load_estimates(run, features)
    table = read_training_values(run.require("training_values.csv", "filter"))
    if len(table) != len(features.train.paths):
        raise TvcleanError(
            f"{run.training_values} has {len(table)} rows but features/train_index.csv has "
            f"{len(features.train.paths)}: re-run `tvclean filter` on {run.root}")
    return ReportData(
        run=run, features=features, estimates=estimates,
        estimate_meta=estimate_meta(run), values=table.score,
        # outliers are discarded images too; the summary counts them apart
        decisions=np.array(["dirty" if d == "outlier" else d for d in table.decision]),
        labels=features.train.labels,
        paths=table.abs_path, suggested=table.suggested_label, table=table,
        threshold=run.resolve().filter.threshold, method=run.resolve().filter.method,
        timings={stage: float(record["seconds"])
                 for stage, record in run.stage_records().items()})


# --- summary ------------------------------------------------------------------------------


def class_counts(data: ReportData) -> list[dict]:
    """Per class: images, clean, dirty, error, Monte-Carlo estimates and median value."""
    in_subset = np.bincount(data.estimates.labels, minlength=len(data.class_names))
    table = []
    for k, name in enumerate(data.class_names):
        mine = data.labels == k
        values = data.values[mine & np.isfinite(data.values)]
        row = {d: int(np.sum(mine & (data.decisions == d))) for d in DECISIONS}
        table.append({"class_name": name, "images": int(mine.sum()), **row,
                      "mc_estimates": int(in_subset[k]),
                      "median_value": float(np.median(values)) if values.size else math.nan})
    return table


def summary_section(data: ReportData, config: ReportConfig) -> Section:
    counts = class_counts(data)
    overview = _table([(_e(k), v) for k, v in _overview(data, counts)], "overview")
    header = ("Class", "Images", "Clean", "Discarded", "Discarded %", "Unreadable",
              "MC estimates", "Median score")
    rows = "".join(_class_row(c) for c in counts)
    per_class = (f'<table class="classes"><thead><tr>{"".join(f"<th>{h}</th>" for h in header)}'
                 f"</tr></thead><tbody>{rows}</tbody></table>")
    return Section("summary", "Summary", overview + per_class)


def _overview(data: ReportData, counts: list[dict]) -> list[tuple[str, str]]:
    readable = sum(c["clean"] + c["dirty"] + c["relabel"] for c in counts)
    dirty = sum(c["dirty"] for c in counts)
    unreadable = sum(c["error"] for c in counts)
    model = data.features.meta.get("model", {})
    config = data.estimate_meta.get("config", {})
    stale = data.run.stale_note()
    items = [("Out of date", f'<span class="stale">{_e(stale)}</span>')] if stale else []
    items += [
        ("Run", _e(str(data.run.root))),
        ("Training images", f"{len(data.paths)} ({readable} readable, {unreadable} unreadable)"),
        ("Validation images", str(int(data.features.val.ok.sum()))),
        ("Classes", str(len(data.class_names))),
        ("Discarded", f'<span id="discarded">{dirty}</span> of {readable} '
                      f"({_percent(dirty, readable)})" + _outlier_note(data)),
        ("Relabelled, reviewed", f"{sum(c['relabel'] for c in counts)} relabelled; "
                                 f"{data.table.decision_source.count('reviewed')} decided by a "
                                 f"person (RUN/review.csv)"),
        ("To check the decisions", f"<code>tvclean review {_e(str(data.run.root))}</code>"),
        ("Threshold", _e(f"{data.threshold:g}")),
        ("Feature model", _e(_model_text(model, data.features.dim))),
        ("Monte-Carlo", _e(f"{data.estimates.episodes} episodes, subset of "
                           f"{data.estimates.rows.size} training and "
                           f"{data.estimates.val_rows.size} validation images, "
                           f"{config.get('head', '?')} head, lr {config.get('lr', '?')}")),
    ]
    evaluation = _evaluation(data.run)
    if evaluation:
        items.append(("Against the truth", _e(evaluation)))
    if data.timings:
        items.append(("Stage times", _e(", ".join(f"{k} {v:.1f} s"
                                                  for k, v in data.timings.items()))))
    items.append(("Written", _e(f"{time.strftime('%Y-%m-%d %H:%M')} by tvclean {__version__}")))
    return items


def _outlier_note(data: ReportData) -> str:
    outliers = data.table.decision.count("outlier")
    return f", of them {outliers} of no class (RUN/outlier/)" if outliers else ""


def _evaluation(run: RunDir) -> str:
    """One line of RUN/evaluation.json's overall metrics, if it is newer than the decisions."""
    path = run.evaluation
    if not path.exists() or path.stat().st_mtime < run.training_values.stat().st_mtime:
        return ""
    m = read_json(path)["overall"]

    def fmt(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.3f}"

    return (f"precision {fmt('precision')}, recall {fmt('recall')}, F1 {fmt('f1')}, "
            f"ROC-AUC {fmt('roc_auc')} ({m.get('mislabeled')} mislabeled of {m.get('n')}; "
            f"from `tvclean evaluate`)")


def _model_text(model: dict, dim: int) -> str:
    sha = str(model.get("sha256", ""))[:12]
    return f"{model.get('name', '?')}" + (f" ({sha})" if sha else "") + f", {dim} dimensions"


def _class_row(c: dict) -> str:
    readable = c["clean"] + c["dirty"] + c["relabel"]
    median = plain(c["median_value"])
    cells = (_e(c["class_name"]), c["images"], c["clean"], c["dirty"],
             _percent(c["dirty"], readable), c["error"], c["mc_estimates"], median)
    return '<tr class="class-row">' + "".join(f"<td>{v}</td>" for v in cells) + "</tr>"


def _table(items: list[tuple[str, str]], css_class: str) -> str:
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    return f'<table class="{css_class}">{rows}</table>'


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


# --- plots --------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure drawn by the Agg backend (no pyplot state, no display needed)."""
    # Imported here: matplotlib costs ~0.3 s to import, and only the report needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No Software metadata: it would put matplotlib's web address into the page.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _plot_text(name: str) -> str:
    """A class name as literal matplotlib text: `$` would start mathtext."""
    return name.replace("$", r"\$")


def _class_colours(n_classes: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if n_classes <= 10:
        return [colormaps["tab10"](k) for k in range(n_classes)]
    if n_classes <= 20:
        return [colormaps["tab20"](k) for k in range(n_classes)]
    return [colormaps["turbo"](k / (n_classes - 1)) for k in range(n_classes)]


def _figure_html(data: ReportData, name: str, png: bytes, alt: str) -> str:
    atomic_write_bytes(data.run.report / name, png)
    return (f'<img class="plot" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def histogram_section(data: ReportData, config: ReportConfig) -> Section:
    k = len(data.class_names)
    cols = min(4, k)
    fig = _new_figure(3.4 * cols, 2.5 * math.ceil(k / cols) + 0.5)
    axes = fig.subplots(math.ceil(k / cols), cols, squeeze=False).ravel()
    for label, ax in enumerate(axes):
        if label < k:
            _class_histogram(ax, data, label)
        else:
            ax.set_axis_off()
    fig.legend(*_histogram_legend(), loc="upper center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    meaning = ("the log-odds that its given label is right, from its training-value and "
               "the validation set" if data.method == "posterior"
               else "its training-value plus z standard errors")
    body = (f"<p>Decision score of every readable training image, by given class: "
            f"{meaning} (see training_values.csv, column score). "
            f"Images below the threshold ({_e(f'{data.threshold:g}')}, dashed) are discarded.</p>"
            + _figure_html(data, "histograms.png", _png(fig), "per-class value histograms"))
    return Section("histograms", "Training-values per class", body)


def _histogram_legend() -> tuple[list[Artist], list[str]]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=CLEAN_COLOUR), Patch(color=DIRTY_COLOUR),
               Line2D([], [], color="black", linestyle="--", linewidth=1)]
    return handles, ["clean", "discarded", "threshold"]


def _class_histogram(ax: Axes, data: ReportData, label: int) -> None:
    mine = (data.labels == label) & np.isfinite(data.values)
    values, dirty = data.values[mine], data.decisions[mine] == "dirty"
    name = _plot_text(data.class_names[label])
    ax.set_title(f"{name}\n{int((~dirty).sum())} clean, {int(dirty.sum())} discarded",
                 fontsize=9)
    if values.size == 0:
        ax.text(0.5, 0.5, "no readable images", ha="center", va="center",
                transform=ax.transAxes)
        return
    bins = np.histogram_bin_edges(np.append(values, data.threshold), bins=30)
    ax.hist([values[~dirty], values[dirty]], bins=bins.tolist(), stacked=True,
            color=[CLEAN_COLOUR, DIRTY_COLOUR])
    ax.axvline(data.threshold, color="black", linestyle="--", linewidth=1)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.tick_params(labelsize=7)


def embedding_rows(data: ReportData, sample: int, seed: int = EMBEDDING_SEED) -> np.ndarray:
    """Row numbers of a seeded sample of at most `sample` readable training images, ascending."""
    readable = np.flatnonzero(np.isfinite(data.values) & data.features.train.ok)
    if readable.size <= sample:
        return readable
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(readable, size=sample, replace=False))


def tsne_2d(features: np.ndarray, seed: int = EMBEDDING_SEED) -> np.ndarray:
    """2-D t-SNE of (n, D) features (PCA to at most 50 dimensions first); returns (n, 2)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, np.float64)
    perplexity = min(30.0, (x.shape[0] - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto",
                max_iter=500, random_state=seed)
    # One thread: Barnes-Hut t-SNE on a few thousand points gains little from more, and
    # its OpenMP threads spin at every barrier, 3-10x slower on a busy machine (measured).
    with threadpool_limits(1):
        if x.shape[1] > 50 and x.shape[0] > 50:
            x = PCA(50, random_state=seed).fit_transform(x)
        return tsne.fit_transform(x)


def embedding_section(data: ReportData, config: ReportConfig) -> Section:
    rows = embedding_rows(data, config.embedding_sample)
    if rows.size < 5:
        return Section("embedding", "Feature map (t-SNE)",
                       f"<p>Too few readable images ({rows.size}) for a map.</p>")
    xy = tsne_2d(data.features.train.features[rows])
    n = len(data.class_names)
    if n <= PANELS_UP_TO:
        columns = min(5, n)
        lines = -(-n // columns)
        fig = _new_figure(2.7 * columns, 2.7 * lines + 0.4)
        axes = np.atleast_1d(fig.subplots(lines, columns)).ravel()
        for k, ax in enumerate(axes):
            if k < n:
                _class_panel(ax, data, rows, xy, k)
            else:
                ax.axis("off")
        how = ("one panel per given class: its kept images in colour, its discarded ones "
               "red (relabelled ones orange), every other image light grey")
    else:
        fig = _new_figure(10, 7.5)
        _scatter_classes(fig.subplots(), data, rows, xy)
        how = "coloured by given class; discarded images are drawn as crosses"
    fig.tight_layout()
    dirty = int(np.sum(data.decisions[rows] == "dirty"))
    body = (f"<p>t-SNE of the features of {rows.size} training images (a seeded sample of at "
            f"most {config.embedding_sample}, {dirty} of them discarded), {how}. Images that "
            f"look alike lie close together: a red point among a class's colour is an image "
            f"whose features resemble its class, one inside another class's cloud resembles "
            f"that class.</p>"
            + _figure_html(data, "embedding.png", _png(fig), "t-SNE map of the features"))
    return Section("embedding", "Feature map (t-SNE)", body)


PANELS_UP_TO = 20  # classes up to which the map is one small panel per class
RELABEL_COLOUR = "#e08a1e"


def _class_panel(ax: Axes, data: ReportData, rows: np.ndarray, xy: np.ndarray, k: int) -> None:
    labels, decisions = data.labels[rows], data.decisions[rows]
    mine = labels == k
    ax.scatter(xy[~mine, 0], xy[~mine, 1], s=3, color="#d5d9de", linewidths=0)
    colour = _class_colours(len(data.class_names))[k]
    styles: tuple[tuple[str, dict[str, Any]], ...] = (
        ("clean", dict(s=9, color=colour)),
        ("relabel", dict(s=16, color=RELABEL_COLOUR, edgecolors="black", linewidths=0.3)),
        ("dirty", dict(s=16, color=DIRTY_COLOUR, edgecolors="black", linewidths=0.3)))
    for kind, style in styles:
        chosen = mine & (decisions == kind)
        ax.scatter(xy[chosen, 0], xy[chosen, 1], **style)
    dropped = int(np.sum(mine & (decisions == "dirty")))
    ax.set_title(f"{_plot_text(data.class_names[k])}: {int(mine.sum())} shown, {dropped} "
                 f"discarded", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _scatter_classes(ax: Axes, data: ReportData, rows: np.ndarray, xy: np.ndarray) -> None:
    from matplotlib.lines import Line2D

    labels, dirty = data.labels[rows], data.decisions[rows] == "dirty"
    colours = _class_colours(len(data.class_names))
    for k, colour in enumerate(colours):
        kept, dropped = (labels == k) & ~dirty, (labels == k) & dirty
        ax.scatter(xy[kept, 0], xy[kept, 1], s=14, color=colour, alpha=0.85, linewidths=0)
        ax.scatter(xy[dropped, 0], xy[dropped, 1], s=30, color=colour, marker="X",
                   edgecolors="black", linewidths=0.4)
    # Explicit handles: a class name starting with "_" would otherwise be left out.
    handles = [Line2D([], [], marker="o", linestyle="", color=c) for c in colours]
    handles.append(Line2D([], [], marker="X", linestyle="", color="grey",
                          markeredgecolor="black"))
    names = [_plot_text(n) for n in data.class_names] + ["discarded"]
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False, ncol=1 if len(names) <= 30 else 2)
    ax.set_xticks([])
    ax.set_yticks([])


def rank_convergence(history: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each history row with the final values.

    history: (checkpoints, n) running means; final: (n,). Returns (checkpoints,),
    NaN where a row (or final) is constant or n < 2.
    """
    final_rank = average_ranks(final)
    return np.array([_pearson(average_ranks(row), final_rank) for row in history], np.float64)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of values, ties sharing their average rank (as scipy's rankdata)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    inverse = np.empty(values.size, np.int64)
    inverse[order] = np.arange(values.size)
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]] if values.size else np.zeros(0, bool)
    dense = np.cumsum(starts)[inverse]
    bounds = np.r_[np.flatnonzero(starts), values.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else math.nan


def convergence_section(data: ReportData, config: ReportConfig) -> Section:
    est = data.estimates
    title = "Convergence of the Monte-Carlo estimates"
    if est.history.shape[0] < 2:
        return Section("convergence", title,
                       f"<p>Only {est.history.shape[0]} checkpoint(s) recorded; run more "
                       f"episodes than checkpoint_every to see the convergence.</p>")
    fig = _new_figure(9, 4.5)
    ax = fig.subplots()
    overall = rank_convergence(est.history, est.mean)
    if len(data.class_names) <= 20:
        for k, colour in enumerate(_class_colours(len(data.class_names))):
            mine = est.labels == k
            ax.plot(est.history_episodes, rank_convergence(est.history[:, mine], est.mean[mine]),
                    color=colour, linewidth=0.8, alpha=0.7, label=_plot_text(data.class_names[k]))
    ax.plot(est.history_episodes, overall, color="black", linewidth=2.2, marker="o",
            markersize=3, label="all classes")
    ax.set_xlabel("episodes")
    ax.set_ylabel("Spearman correlation with final values")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    first = overall[0]
    body = (f"<p>Rank correlation of the running-mean training-values after each checkpoint "
            f"with the final values after {est.episodes} episodes ({est.rows.size} images; "
            f"thin lines: within each class). The curve reaches 1 at the last checkpoint by "
            f"definition; the earlier it levels off near 1, the less more episodes would "
            f"change the ranking. After {int(est.history_episodes[0])} episodes: "
            f"{first:.3f}.</p>"
            + _figure_html(data, "convergence.png", _png(fig), "convergence plot"))
    return Section("convergence", title, body)


# --- thumbnails ---------------------------------------------------------------------------


def extreme_rows(data: ReportData, label: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the `count` lowest-valued and `count` highest-valued images of a class.

    Lowest first, then highest first; a class with fewer than 2*count images is
    split between the two without showing an image twice.
    """
    mine = np.flatnonzero((data.labels == label) & np.isfinite(data.values))
    ordered = mine[np.argsort(data.values[mine], kind="stable")]
    n_low = min(count, (ordered.size + 1) // 2)
    n_high = min(count, ordered.size - n_low)
    return ordered[:n_low], ordered[::-1][:n_high]


def thumbnail_uri(path: str, pixels: int = THUMBNAIL_PIXELS) -> str | None:
    """A data URI of a small thumbnail of the image at `path`; None if it cannot be read."""
    try:
        with open_image(path) as image:
            if image.width * image.height > DEFAULT_MAX_PIXELS:
                return None
            image.draft("RGB", (pixels, pixels))  # JPEG only: decode at reduced size
            image = to_rgb_or_l(ImageOps.exif_transpose(image))
            image.thumbnail((pixels, pixels))
            return _encode_thumbnail(image)
    except Exception:  # a missing or broken image gets a placeholder, not a crash
        return None


def _encode_thumbnail(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    kind = "png"
    if buf.tell() > PNG_LIMIT:  # photographs: JPEG is several times smaller
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


def borderline_rows(data: ReportData, count: int) -> np.ndarray:
    """The `count` readable, not yet reviewed images nearest the threshold relative to their
    uncertainty (smallest |score - threshold| / stderr, as the review queue; the posterior
    rule's log-odds have no standard error: the bare distance), most uncertain first."""
    table = data.table
    open_ = np.isfinite(data.values) & (np.array(table.decision_source) != "reviewed")
    rows = np.flatnonzero(open_)
    margin = decision_margin(data.values[rows], table.stderr[rows], data.threshold)
    return rows[np.argsort(margin, kind="stable")[:count]]


def borderline_section(data: ReportData, config: ReportConfig) -> Section:
    rows = borderline_rows(data, 3 * config.thumbnails)
    nearest = ("nearest even odds that their label is right"
               if data.method == "posterior" and data.threshold == 0
               else f"nearest the threshold ({_e(plain(data.threshold))}) for their standard error")
    body = (f"<p>The {rows.size} images whose decision is least certain: {nearest}. "
            f"These are the ones worth a person's look: <code>tvclean review {_e(str(data.run.root))}</code> shows them "
            f"first, and every image you confirm or correct there becomes a validation image "
            f"for the next <code>tvclean estimate</code>.</p>"
            + _grid(data, rows, -1, "borderline", "Most uncertain first"))
    return Section("borderline", "Borderline images", body)


UNREADABLE_SHOWN = 200


def unreadable_section(data: ReportData, config: ReportConfig) -> Section:
    rows = []
    for split in ("train", "val"):
        part = getattr(data.features, split)
        for i in np.flatnonzero(~part.ok):
            rows.append((split, part.paths[i], part.errors[i] if part.errors else ""))
    if not rows:
        return Section("unreadable", "Unreadable files", "<p>Every image could be read.</p>")
    cells = "".join(f"<tr><td>{_e(s)}</td><td>{_e(p)}</td><td>{_e(e)}</td></tr>"
                    for s, p, e in rows[:UNREADABLE_SHOWN])
    more = (f"<p>... and {len(rows) - UNREADABLE_SHOWN} more: see "
            f"features/train_index.csv and val_index.csv (status error).</p>"
            if len(rows) > UNREADABLE_SHOWN else "")
    body = (f"<p>{len(rows)} image file(s) could not be used; they were skipped (decision "
            f"<code>error</code>) and your files were not changed.</p>"
            f'<table class="unreadable"><thead><tr><th>Split</th><th>File</th><th>Why</th>'
            f"</tr></thead><tbody>{cells}</tbody></table>{more}")
    return Section("unreadable", "Unreadable files", body)


def thumbnail_section(data: ReportData, config: ReportConfig) -> Section:
    blocks = []
    for label, name in enumerate(data.class_names):
        low, high = extreme_rows(data, label, config.thumbnails)
        blocks.append(f'<div class="class-thumbs"><h3>{_e(name)}</h3>'
                      + _grid(data, low, label, "lowest", "Most negative")
                      + _grid(data, high, label, "highest", "Most positive") + "</div>")
    body = (f"<p>The {config.thumbnails} lowest- and highest-valued images of each class "
            f"by decision score, with the given label and, after "
            f"the arrow, the suggested (or reviewed) one. A red frame marks a discarded image, "
            f"an orange one a relabelled image; hover for the full path.</p>"
            + "".join(blocks))
    return Section("thumbnails", "Most negative and most positive images", body)


def _grid(data: ReportData, rows: np.ndarray, label: int, kind: str, heading: str) -> str:
    figures = "".join(_thumbnail(data, int(r)) for r in rows) or "<p>none</p>"
    return (f'<h4>{heading}</h4><div class="grid" data-class="{label}" data-kind="{kind}">'
            f"{figures}</div>")


def _thumbnail(data: ReportData, row: int) -> str:
    table = data.table
    path, decision = data.paths[row], data.decisions[row]
    uri = thumbnail_uri(path)
    picture = (f'<img src="{uri}" alt="">' if uri else
               '<div class="placeholder">unreadable</div>')
    given, other = table.given_label[row], table.reviewed_label[row] or table.suggested_label[row]
    labels = _e(given) + (f' &rarr; {_e(other)}' if other and other != given else "")
    reviewed = " reviewed" if table.decision_source[row] == "reviewed" else ""
    return (f'<figure class="thumb {decision}{reviewed}" title="{_e(path)}">{picture}'
            f'<figcaption><div class="labels">{labels}</div>'
            f'<div class="score">{_score_text(data.values[row], table.stderr[row])}</div>'
            f"<span>{_e(Path(path).name)}</span></figcaption></figure>")


def _score_text(score: float, stderr: float) -> str:
    """score ± stderr; the posterior rule's log-odds (no stderr) as the probability that the
    given label is right."""
    probability = label_probability(score, stderr)
    if probability:
        return f"label right: p {probability}"
    return f"{plain(score)} &plusmn; {plain(stderr, signed=False)}"


def plain(value: float, digits: int = 3, signed: bool = True) -> str:
    """A number with `digits` significant digits and never an exponent: +0.0973, -0.00123."""
    if not np.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:{'+' if signed else ''}.{min(decimals, 12)}f}"


# --- the page -----------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d232a; background: #f4f5f7; }
header { background: #23313f; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; overflow-wrap: anywhere; }
nav a { color: #cfe3ff; margin-right: 18px; font-size: 14px; text-decoration: none; }
main { max-width: 1360px; margin: 0 auto; padding: 8px 28px 40px; }
section { background: #fff; border-radius: 6px; padding: 6px 22px 18px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h2 { font-size: 18px; border-bottom: 1px solid #e3e6ea; padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 4px; overflow-wrap: anywhere; }
h4 { font-size: 12px; margin: 8px 0 4px; color: #5b6570; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #eceef1; text-align: left; }
table.classes td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.overview th { color: #5b6570; font-weight: 500; }
img.plot { max-width: 100%; height: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure.thumb { margin: 0; width: 124px; padding: 3px; border: 3px solid #d9dde2;
               border-radius: 4px; background: #fafbfc; }
figure.thumb.dirty { border-color: #d6453d; }
figure.thumb.relabel { border-color: #e08a1e; }
figure.thumb.reviewed { box-shadow: 0 0 0 2px #2f6fdf; }
figcaption .labels { font-size: 12px; font-weight: 600; overflow-wrap: anywhere; }
figcaption .score { color: #1d232a; }
code { background: #eef1f4; padding: 1px 4px; border-radius: 3px; }
.stale { color: #b3261e; font-weight: 600; }
table.unreadable td { font-size: 13px; overflow-wrap: anywhere; }
figure.thumb img, .placeholder { width: 112px; height: 112px; object-fit: contain;
                                 image-rendering: pixelated; display: block; margin: 0 auto; }
.placeholder { background: repeating-linear-gradient(45deg, #e6e8eb 0 6px, #f3f4f6 6px 12px);
               color: #7a838c; font-size: 11px; line-height: 112px; text-align: center; }
figcaption { font-size: 11px; text-align: center; font-variant-numeric: tabular-nums; }
figcaption span { display: block; overflow: hidden; text-overflow: ellipsis;
                  white-space: nowrap; color: #5b6570; }
"""


def render_page(title: str, sections: list[Section]) -> str:
    """The complete HTML document: header, navigation and sections (bodies already HTML)."""
    nav = "".join(f'<a href="#{s.anchor}">{_e(s.heading)}</a>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{_e(s.heading)}</h2>{s.body}</section>'
                   for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><nav>{nav}</nav></header><main>{body}</main>"
            f"</body></html>\n")
