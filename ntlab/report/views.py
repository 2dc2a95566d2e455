"""What a report shows for each kind of run: headline table, figures with captions, tables.

A view reads only what the command left in its run directory (config.json, status.json,
results.json and the tidy CSVs), so the same view serves the command's own report at the
end of a run, `ntlab report` later, and a failed run with half its tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ntlab.errors import NtlabError
from ntlab.metrics import (
    EFFECT_LABELS,
    METRIC_DIRECTIONS,
    binomial_se,
    effect_label,
    gain_effect,
    images_measured,
    metric_label,
    regime_label,
)
from ntlab.registry import Registry
from ntlab.report import figures as fig
from ntlab.runs import read_json_object

STL_METRICS_FILE = "stl_metrics.csv"  # ntlab.core.runner.STL_METRICS_FILE (no torch import here)
PREDICTIONS_FILE = "predictions.pt"  # ntlab.report.predictions.PREDICTIONS_FILE


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a run: file stem (`<name>.png` in the run directory), title, a caption
    saying how to read it, and the pure function that draws it."""

    name: str
    title: str
    caption: str
    build: Callable[[], Figure]


@dataclass(frozen=True)
class TableSpec:
    title: str
    frame: pd.DataFrame
    caption: str = ""


@dataclass
class Run:
    """A run directory as written by any command (README: "The run directory")."""

    path: Path
    config: dict[str, Any]
    status: dict[str, Any]
    results: dict[str, Any] | None
    _tables: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> Run:
        path = Path(path)
        if not path.is_dir():
            raise NtlabError(f"{path} is not a folder; give a run directory written by ntlab")
        if not (path / "config.json").is_file():
            raise NtlabError(
                f"{path} is not an ntlab run directory (no config.json); give the --out folder "
                "of an ntlab command"
            )
        fix = "the run cannot be read; run its command again (with --overwrite)"
        config = read_json_object(path / "config.json", fix)
        status = (
            read_json_object(path / "status.json", fix) if (path / "status.json").is_file() else {}
        )
        results = (
            read_json_object(path / "results.json", fix)
            if (path / "results.json").is_file()
            else None
        )
        if "command" not in config:
            raise NtlabError(f"{path}/config.json does not name the command that wrote it")
        return cls(path, config, status, results)

    @classmethod
    def live(cls, path: Path, results: dict[str, Any]) -> Run:
        """The run being finished: its results are in memory, not yet on disk."""
        run = cls.load(path)
        run.results = results
        run.status = {**run.status, "state": "completed"}
        return run

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def command(self) -> str:
        return str(self.config["command"])

    @property
    def state(self) -> str:
        state = self.status.get("state", "unknown")
        if state == "completed" and self.results is None:
            return "failed"  # a completed status is written after results: this is damage
        return state

    @property
    def train(self) -> dict[str, Any]:
        return self.config.get("train", {})

    def table(self, *names: str) -> pd.DataFrame | None:
        """The first of `names` (paths inside the run) that exists, read as a DataFrame."""
        for name in names:
            if name not in self._tables:
                file = self.path / name
                try:
                    self._tables[name] = pd.read_csv(file) if file.is_file() else None
                except (pd.errors.EmptyDataError, pd.errors.ParserError):
                    self._tables[name] = None
            if self._tables[name] is not None and len(self._tables[name]):
                return self._tables[name]
        return None

    def csv_files(self) -> list[Path]:
        return sorted([*self.path.glob("*.csv"), *self.path.glob("checkpoints/*.csv")])


# ---------------------------------------------------------------------------------------------
# Formatting


def num(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int | float):
        text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
        return text.replace("-", "−")
    return str(value)


def pm(mean: Any, std: Any, digits: int = 2, signed: bool = True, always: bool = False) -> str:
    """`+2.90 ± 0.60`; a ± of 0 is left out unless `always` (a TG's noise: ± 0.00 says the
    two models agreed on every test image)."""
    text = num(mean, digits, signed)
    if text and isinstance(std, int | float) and (std or always) and not math.isnan(std):
        text += f" ± {num(std, digits)}"
    return text


def tg_pm(stat: dict[str, Any], seeds: Any = None) -> str:
    """A summary's TG entry (`mean`, `std`, and `se` with one seed) as `+2.90 ± 0.60`."""
    n = seed_count(stat.get("seeds", seeds)) or 1
    if n == 1 and "se" in stat:
        return pm(stat.get("mean"), stat.get("se"), always=True)
    return pm(stat.get("mean"), stat.get("std"))


def seed_count(seeds: Any) -> int | None:
    """How many seeds a results.json entry rests on (a list of seeds or a count)."""
    if isinstance(seeds, list):
        return len(seeds) or None
    return seeds if isinstance(seeds, int) else None


def regime_text(regime: str | None, seeds: Any = None) -> str:
    """A target's regime as shown to people, `(1 seed)` where there was no noise estimate."""
    return regime_label(regime, seed_count(seeds)) if regime else ""


def effect_text(effect: str | None, seeds: Any = None) -> str:
    """One entry's effect (a λ, a method): positive, negative or neutral (within noise)."""
    return effect_label(effect, seed_count(seeds)) if effect else ""


def run_noise(d: dict[str, Any], stl: dict[str, Any] | None = None) -> tuple[Any, str | None]:
    """(the test-set SE of a one-seed run's TG, its kind) as results.json keeps them; a
    result written before them: the binomial SE where the test-set size is known (its own
    `test_n` or its STL's), else none."""
    se = d.get("tg_se")
    if isinstance(se, int | float) and math.isfinite(se):
        return se, d.get("tg_se_kind")
    n = images_measured(d) or (images_measured(stl) if stl else None)
    if n and stl and isinstance(d.get("test_score"), int | float):
        return binomial_se(d["test_score"], stl["test_score"], n), "binomial"
    return None, None


def run_effect(d: dict[str, Any], stl: dict[str, Any] | None = None) -> str:
    """A one-seed run's verdict as shown to people: helps, hurts or within noise (its stored
    `effect`, else by its test-set SE); empty without a TG or an SE — never by the sign."""
    if d.get("effect") in EFFECT_LABELS:
        return effect_text(d["effect"], 1)
    tg = d.get("transfer_gain")
    se, _ = run_noise(d, stl)
    if not isinstance(tg, int | float) or not math.isfinite(tg) or se is None:
        return ""
    return effect_text(gain_effect([tg], se), 1)


def lam_text(lam: Any) -> str:
    return f"{float(lam):g}"


def target_metric(r: dict[str, Any] | None) -> tuple[str, bool]:
    """(the target's primary metric, whether higher is better) of a results.json; results
    written before ntlab recorded them were accuracies."""
    r = r or {}
    return str(r.get("metric") or "acc"), bool(r.get("higher_is_better", True))


def metric_header(metric: str, higher_is_better: bool, split: str | None = None) -> str:
    """A column of one metric with its units and direction: `test acc (%) ↑`,
    `test mIoU (%) ↑`, `val abs err ↓`, `test mean angle (°) ↓`."""
    prefix = f"{split} " if split else ""
    units = fig._unit_suffix(metric)
    return f"{prefix}{metric_label(metric)}{units} {fig.direction_arrow(higher_is_better)}"


def score_header(r: dict[str, Any] | None, split: str) -> str:
    """The column of the target's primary metric on `split` (`val_score` / `test_score`)."""
    return metric_header(*target_metric(r), split)


def tg_units(r: dict[str, Any] | None, split: str = "test") -> str:
    """What the TGs of a result are measured in (`test accuracy points`, …)."""
    return fig.tg_units(*target_metric(r), split)


def run_metric(run: Run) -> tuple[str, bool]:
    """The primary metric of a run's target: from its results, else (a run without results)
    the one its STL curve or its validation rows record, else accuracy."""
    if run.results and "metric" in run.results:
        return target_metric(run.results)
    target = run.train.get("target")
    for name in (STL_METRICS_FILE, "metrics.csv"):
        table = run.table(name)
        if table is None or not {"task", "split", "metric"} <= set(table.columns):
            continue
        rows = table[(table["task"] == target) & (table["split"] == "val")]
        if len(rows) and "acc" not in set(rows["metric"]):
            metric = str(rows["metric"].iloc[0])
            return metric, METRIC_DIRECTIONS.get(metric, True)
    return "acc", True


# ---------------------------------------------------------------------------------------------
# Views


class View:
    """The default view: any run, shown by its results and tables."""

    title = "run"

    def headline(self, run: Run) -> pd.DataFrame | None:
        """The headline numbers; none for a run without results (failed or unfinished)."""
        return self.rows(run.results) if run.results else None

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        """The headline table of a run's results.json."""
        return None

    def figures(self, run: Run) -> list[FigureSpec]:
        return []

    def tables(self, run: Run) -> list[TableSpec]:
        return []

    def summary(self, run: Run) -> dict[str, Any]:
        """One row of the comparison table of several runs."""
        r = run.results or {}
        t = run.train
        metric, higher = target_metric(r)
        return {
            "target": r.get("target", t.get("target", "")),
            "metric": metric,
            "higher_is_better": higher,
            "method": r.get("method", t.get("method", "")),
            "test_score": r.get("test_score"),
            "tg": r.get("transfer_gain"),
            "tg_std": run_noise(r, r.get("stl"))[0],  # the ± of TG: one seed's test-set SE
            "effect": r.get("effect"),
            "regime": run_effect(r, r.get("stl")),
        }


VIEWS: Registry[View] = Registry("report view")


def view_for(run: Run) -> View:
    return VIEWS.get(run.command) if run.command in VIEWS else View()


def _register(command: str) -> Callable[[type[View]], type[View]]:
    def decorate(cls: type[View]) -> type[View]:
        VIEWS.register(command)(cls())
        return cls

    return decorate


def training_caption(metric: str = "acc", higher_is_better: bool = True) -> str:
    words = fig.score_words(metric)
    worse = "below" if higher_is_better else "above"
    direction = "" if metric == "acc" else f" ({fig.direction_words(higher_is_better)})"
    return (
        "Training loss of each task against the step (left axis, log scale), the target first "
        f"and in bold; on the right axis the target's validation {words}{direction} of this "
        "run (black) and of the STL run of the same budget (grey, dashed) where it was "
        "recorded. A target loss that stalls while the auxiliary loss keeps falling is the "
        f"auxiliary task taking over the shared features; this run's {words} {worse} the STL "
        "curve is negative transfer during training."
    )


TRAINING_CAPTION = training_caption()


def _training_spec(run: Run) -> list[FigureSpec]:
    metrics = run.table("metrics.csv")
    if metrics is None or not ((metrics["split"] == "train") & (metrics["metric"] == "loss")).any():
        return []
    stl = run.table(STL_METRICS_FILE)
    target = run.train.get("target")
    metric, higher = run_metric(run)
    return [
        FigureSpec(
            "training",
            "Training curves",
            training_caption(metric, higher),
            lambda: fig.training_figure(metrics, target, stl, metric, higher),
        )
    ]


PREDICTIONS_CAPTION = (
    "A few test images of the target (left) and, for each dense task the model trained, its "
    "ground truth beside the final model's prediction. Segmentation: one fixed colour per "
    "class, ignored pixels black; depth: one colour scale per image, shared by the truth and "
    "the prediction (invalid pixels black); surface normals: the unit vector n drawn as the "
    "colour (n + 1) / 2."
)


def _predictions_spec(run: Run) -> list[FigureSpec]:
    """The predictions figure of a dense target, where the run wrote `predictions.pt`."""
    path = run.path / PREDICTIONS_FILE
    if not path.is_file():
        return []

    def build() -> Figure:
        from ntlab.storage import load_torch_file

        blob = load_torch_file(path, "train the run again (with --overwrite)")
        return fig.dense_predictions_figure(blob)

    title = "Predictions beside the ground truth"
    return [FigureSpec("predictions", title, PREDICTIONS_CAPTION, build)]


def _model_rows(r: dict[str, Any], main: str) -> list[dict[str, str]]:
    """The run's model, then the EW and STL runs it is compared with (where recorded)."""

    stl = r.get("stl")
    val, test = score_header(r, "val"), score_header(r, "test")

    def row(label: str, d: dict[str, Any], baseline: bool = False) -> dict[str, str]:
        tg = d.get("transfer_gain")
        se, _ = run_noise(d, stl)
        return {
            "model": label,
            val: num(d.get("val_score")),
            test: num(d.get("test_score")),
            "TG vs STL (test)": "0 (baseline)" if baseline else pm(tg, se, always=True),
            "transfer": "reference" if baseline else run_effect(d, stl),
        }

    rows = [row(main, r)]
    if r.get("ew"):
        rows.append(row(f"ew ({r['ew'].get('source', '')})", r["ew"]))
    if r.get("stl"):
        rows.append(row(f"stl ({r['stl'].get('source', '')})", r["stl"], baseline=True))
    return rows


def _task_metrics(
    v: dict[str, Any], directions: dict[str, bool] | None = None
) -> list[tuple[str, bool, Any, Any]]:
    """(metric, higher is better, val, test) of one task of a results.json: a classifier's
    accuracy (its other metrics are diagnostics; the CSD has its own column), every metric of
    any other task, its primary first; results written before ntlab kept every metric: the
    primary alone. `directions`: metric → higher is better where recorded (the target's);
    ntlab's own metrics are known, any other is taken as higher is better."""
    primary, higher = target_metric(v)
    val, test = v.get("val") or {}, v.get("test") or {}
    if primary == "acc" or not (val or test):
        return [(primary, higher, v.get("val_score"), v.get("test_score"))]
    names = list(dict.fromkeys([primary, *val, *test]))
    directions = {**METRIC_DIRECTIONS, **(directions or {}), primary: higher}
    return [(m, directions.get(m, True), val.get(m), test.get(m)) for m in names]


def _per_task(r: dict[str, Any]) -> list[TableSpec]:
    """Every metric of every task of the final model, one row per (task, metric), with its
    direction; the CSD for classification tasks."""
    tasks = r.get("tasks") or {}
    if not tasks:
        return []
    classifiers = any(target_metric(v)[0] == "acc" for v in tasks.values())
    rows = []
    for task, v in tasks.items():
        primary = target_metric(v)[0]
        known = r.get("directions") if task == r.get("target") else None
        metrics = _task_metrics(v, known)
        for metric, higher, val, test in metrics:
            row = {
                "task": task,
                "metric": metric_label(metric) + fig._unit_suffix(metric),
                "better": f"{fig.direction_arrow(higher)} {fig.direction_words(higher)}",
                "val": num(val),
                "test": num(test),
            }
            if len(metrics) > 1:
                row["metric"] += " (primary)" if metric == primary else ""
            if classifiers:
                row["test CSD"] = num(v.get("test_csd"), 3) if metric == "acc" else ""
            rows.append(row)
    caption = (
        "Each task's metrics on validation and test (↑ higher is better, ↓ lower is better); "
        "a task's primary metric is the one its TG and model selection use."
    )
    if classifiers:
        caption += (
            " CSD is 1 − mean max-softmax confidence on that task's test set (the paper's "
            "Eq. 4), for classification tasks."
        )
    return [TableSpec("Every task of the final model", pd.DataFrame(rows), caption)]


@_register("train")
class TrainView(View):
    title = "training"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        return pd.DataFrame(_model_rows(r, r.get("method", "?")))

    def figures(self, run: Run) -> list[FigureSpec]:
        return _training_spec(run) + _predictions_spec(run)

    def tables(self, run: Run) -> list[TableSpec]:
        return _per_task(run.results or {})


@_register("forkmerge train")
class ForkMergeView(View):
    title = "ForkMerge training"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        return pd.DataFrame(_model_rows(r, "forkmerge"))

    def summary(self, run: Run) -> dict[str, Any]:
        return {**super().summary(run), "method": "forkmerge"}

    def figures(self, run: Run) -> list[FigureSpec]:
        specs = []
        merges = run.table("merges.csv")
        if merges is not None:
            specs.append(
                FigureSpec(
                    "lambda",
                    "Λ* per merge round",
                    "Each bar is one merge; its segments are the share Λ* of each branch in the "
                    "merged model. A bar all in the target-alone colour means the auxiliary "
                    "tasks were judged harmful at that point of training.",
                    lambda: fig.lambda_figure(merges),
                )
            )
        search = run.table("search.csv")
        metric, higher = run_metric(run)
        if search is not None:
            best = "peak" if higher else "dip"
            specs.append(
                FigureSpec(
                    "search",
                    "Merge-search landscape",
                    f"Validation {fig.score_words(metric)} "
                    f"({fig.direction_words(higher)}) of every candidate Λ tried at each "
                    "merge; the star is the chosen Λ*. A flat curve means the merge weight "
                    f"barely matters; a {best} inside the range means the branches complement "
                    "each other.",
                    lambda: fig.search_figure(search, metric, higher),
                )
            )
        return specs + _training_spec(run) + _predictions_spec(run)

    def tables(self, run: Run) -> list[TableSpec]:
        merges = run.table("merges.csv")
        out = []
        metric, higher = run_metric(run)
        unit = "%" if metric in fig.PERCENT_METRICS else ""
        if merges is not None:
            cells = [
                f"{lam:.2f} ({score:.2f}{unit})"
                for lam, score in zip(merges["lambda"], merges["val_score"])
            ]
            names = merges.drop_duplicates("branch").set_index("branch")["task_weights"]
            wide = (
                merges.assign(cell=cells)
                .pivot_table(
                    index=["round", "step"], columns="branch", values="cell", aggfunc="first"
                )
                .rename(columns=lambda b: f"branch {b}: {names[b]}")
                .reset_index()
            )
            wide.columns = [str(c) for c in wide.columns]
            out.append(
                TableSpec(
                    "Λ* per round",
                    wide,
                    "Each branch's merge weight Λ* and, in brackets, its own validation "
                    f"{fig.score_words(metric)} ({fig.direction_words(higher)}) before the "
                    "merge.",
                )
            )
        return out + _per_task(run.results or {})


GCS_CAPTION = (
    "Each point is one batch: the cosine between the target gradient and the auxiliary "
    "gradient (x) against the transfer gain of one SGD step with weight λ (y). Left of 0 the "
    "gradients conflict, above 0 the step helped. If conflict caused negative transfer, the "
    "upper-left and lower-right quadrants would be empty. In the table, each mean TG has "
    "its standard error over the batch pairs and the validation images, and is within "
    "noise unless beyond twice it."
)


@_register("gcs")
class GcsView(View):
    title = "gradient cosine similarity vs transfer gain"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        rows = [
            {
                "λ": lam_text(lam),
                f"mean one-step TG ({tg_units(r, 'val')})": pm(
                    v["mean_tg"], v.get("mean_tg_se"), 3, always="mean_tg_se" in v
                ),
                "transfer": effect_text(v["effect"], 1) if "effect" in v else "",
                "steps that help": f"{v['share_tg_positive']:.0%}",
                "corr(GCS, TG)": num(v["corr_gcs_tg"], signed=True),
                "conflicting yet helpful": f"{v['share_conflicting_but_helpful']:.0%}",
                "aligned yet harmful": f"{v['share_aligned_but_harmful']:.0%}",
            }
            for lam, v in r.get("per_lam", {}).items()
        ]
        return pd.DataFrame(rows)

    def summary(self, run: Run) -> dict[str, Any]:
        r = run.results or {}
        return {**super().summary(run), "method": f"gcs ({r.get('aux_kind', '')})"}

    def figures(self, run: Run) -> list[FigureSpec]:
        table = run.table("gcs.csv")
        if table is None:
            return []
        return [
            FigureSpec(
                "gcs",
                "Gradient conflict vs one-step transfer gain",
                GCS_CAPTION,
                lambda: fig.gcs_figure(table, *target_metric(run.results)),
            )
        ]

    def tables(self, run: Run) -> list[TableSpec]:
        r = run.results
        if not r:
            return []
        frame = pd.DataFrame(
            [
                {"quantity": "batch pairs", "value": str(r.get("batches", ""))},
                {
                    "quantity": "pairs with conflicting gradients (GCS < 0)",
                    "value": f"{r.get('share_conflicting', 0):.0%}",
                },
                {"quantity": "mean GCS", "value": num(r.get("mean_gcs"), 3, signed=True)},
                {"quantity": "auxiliary", "value": str(r.get("aux_kind", ""))},
                {"quantity": "step size η", "value": num(r.get("eta"), 3)},
            ]
        )
        return [TableSpec("Gradient conflict", frame)]


def _lam_stats_frame(r: dict[str, Any], extra: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per λ: TG mean ± std, whether it clears the seed noise, and `extra` columns."""
    effects = r.get("effect_per_lam", {})
    rows = []
    one = seed_count(r.get("seeds")) == 1
    for lam, v in r.get("per_lam", {}).items():
        noise = v.get("tg_se") if one else v.get("tg_std")
        row = {"λ": lam_text(lam), "TG vs STL (test)": pm(v.get("tg_mean"), noise, always=one)}
        if effects:
            row["transfer"] = "λ = 0: STL" if float(lam) == 0 else _effect(effects, lam, r)
        for key, label in (extra or {}).items():
            if f"{key}_mean" in v:
                signed = key.startswith("tg")
                digits = 3 if key == "csd" else 2
                row[label] = pm(v[f"{key}_mean"], v.get(f"{key}_std"), digits, signed)
        rows.append(row)
    return pd.DataFrame(rows)


def _best_lam_summary(run: Run) -> dict[str, Any]:
    r = run.results or {}
    return {
        **View().summary(run),
        "method": f"best fixed λ = {lam_text(r['best_lam'])}" if "best_lam" in r else "fixed λ",
        "tg": r.get("best_tg"),
        "tg_std": r.get("best_tg_se", r.get("best_tg_std")),
        "regime": regime_text(r.get("regime"), r.get("seeds")),
    }


def _effect(effects: dict[str, str], lam: str, r: dict[str, Any]) -> str:
    return effect_text(effects.get(f"{float(lam):g}"), r.get("seeds"))


@_register("csd")
class CsdView(View):
    title = "confidence score discrepancy vs transfer gain"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        return _lam_stats_frame(r, {"csd": "CSD on target test"})

    def summary(self, run: Run) -> dict[str, Any]:
        return _best_lam_summary(run)

    def figures(self, run: Run) -> list[FigureSpec]:
        table = run.table("csd.csv")
        if table is None:
            return []
        caption = (
            "Each point is one λ: CSD of the trained model on the target test set (x) and its "
            "TG (y), mean ± std over seeds. Moving right, the training distribution drifts "
            "from the target's; TG falling with it is negative transfer driven by that shift."
        )
        return [
            FigureSpec(
                "csd", "Distribution shift vs transfer gain", caption, lambda: fig.csd_figure(table)
            )
        ]

    def tables(self, run: Run) -> list[TableSpec]:
        return _regime_table(run)


def _best_tg(r: dict[str, Any]) -> str:
    if "best_tg_se" in r:
        return pm(r.get("best_tg"), r["best_tg_se"], always=True) + " (± test-set SE)"
    return pm(r.get("best_tg"), r.get("best_tg_std"))


def _regime_table(run: Run) -> list[TableSpec]:
    r = run.results
    if not r or "regime" not in r:
        return []
    rows = [
        {
            "quantity": "regime (Defs. 3.2/3.3, beyond seed noise)",
            "value": regime_text(r["regime"], r.get("seeds")),
        },
        {"quantity": "regime rests on", "value": str(r.get("regime_basis", ""))},
        {"quantity": "best λ (test TG)", "value": lam_text(r["best_lam"])},
        {"quantity": "its TG", "value": _best_tg(r)},
        {
            "quantity": "seed" if len(r.get("seeds", [])) == 1 else "seeds",
            "value": ", ".join(str(s) for s in r.get("seeds", [])),
        },
    ]
    if "corr_csd_tg" in r:
        rows.append(
            {"quantity": "corr(CSD, TG) over λ", "value": num(r["corr_csd_tg"], signed=True)}
        )
    return [TableSpec("Transfer regime", pd.DataFrame(rows), str(r.get("regime_rule", "")))]


@_register("tsne")
class TsneView(View):
    title = "t-SNE of interpolated training distributions"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        rows = [
            {
                "λ": lam_text(lam),
                **{f"{k} points": str(n) for k, n in v.get("points", {}).items()},
                "aux share drawn": f"{v.get('aux_share', 0):.1%}",
                "λ/(1+λ)": f"{v.get('expected_aux_share', 0):.1%}",
            }
            for lam, v in r.get("per_lam", {}).items()
        ]
        return pd.DataFrame(rows)

    def summary(self, run: Run) -> dict[str, Any]:
        return {
            **super().summary(run),
            "method": f"features of {(run.results or {}).get('model', '')}",
        }

    def figures(self, run: Run) -> list[FigureSpec]:
        table = run.table("tsne.csv")
        if table is None:
            return []
        caption = (
            "t-SNE of the model's features, one panel per λ: target test points (grey), "
            "target training points and the auxiliary training points of each domain, drawn "
            "at share λ/(1+λ) (the interpolated distribution, Eq. 3); each digit sits at the "
            "centre of its class's test points. Auxiliary points in clusters of their own, "
            "away from the target test points, are the distribution shift that λ brings in."
        )
        return [
            FigureSpec(
                "tsne",
                "Interpolated training distributions",
                caption,
                lambda: fig.tsne_figure(table, run.train.get("target")),
            )
        ]


@_register("sweep")
class SweepView(View):
    title = "task-weight sweep"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        frame = _lam_stats_frame(
            r, {"tg_val": "TG (val)", "test_score": score_header(r, "test"), "csd": "CSD"}
        )
        frame.insert(0, "method", "fixed λ")
        extra = []
        gs = r.get("grid_search")
        if gs:
            chosen = ", ".join(lam_text(x) for x in gs.get("lam_per_seed", []))
            extra.append(
                {
                    "method": "grid search",
                    "λ": f"chosen on val: {chosen}",
                    "TG vs STL (test)": tg_pm(gs["tg"], r.get("seeds")),
                    "transfer": effect_text(gs.get("effect"), r.get("seeds")),
                }
            )
        fm = r.get("forkmerge")
        if fm:
            extra.append(
                {
                    "method": "forkmerge",
                    "λ": "merged",
                    "TG vs STL (test)": tg_pm(fm["tg"], r.get("seeds")),
                    "transfer": effect_text(fm.get("effect"), r.get("seeds")),
                    score_header(r, "test"): pm(
                        fm["test_score"]["mean"], fm["test_score"]["std"], signed=False
                    ),
                }
            )
        return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True).fillna("")

    def summary(self, run: Run) -> dict[str, Any]:
        return _best_lam_summary(run)

    def figures(self, run: Run) -> list[FigureSpec]:
        table = run.table("sweep.csv")
        if table is None:
            return []
        fixed = table[table["method"] == "fixed"] if "method" in table else table
        fm = table[table["method"] == "forkmerge"] if "method" in table else None
        gs = ((run.results or {}).get("grid_search") or {}).get("tg", {}).get("mean")
        metric, higher = target_metric(run.results)
        caption = (
            f"TG ({tg_units(run.results)}) against λ, mean ± std over seeds with each seed as "
            "a faint dot (with one seed "
            "the bars are ± the paired test-set SE of its TG); below the "
            "dashed line is negative transfer. The orange band is ForkMerge with the same "
            "budget and the dash-dotted line grid search (λ chosen on validation), when run."
        )
        return [
            FigureSpec(
                "sweep",
                "Transfer gain against the task weight",
                caption,
                lambda: fig.sweep_figure(fixed, fm, gs, metric, higher),
            )
        ]

    def tables(self, run: Run) -> list[TableSpec]:
        return _regime_table(run)


@_register("pairwise")
class PairwiseView(View):
    title = "pairwise transfer"

    def _table(self, run: Run) -> pd.DataFrame | None:
        return run.table("pairwise.csv", "checkpoints/cells.csv")

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        rows = [
            {
                "method": m,
                "pairs": str(v["cells"]),
                "hurt (beyond noise)": str(v.get("hurt_cells", "—")),
                "help (beyond noise)": str(v.get("helped_cells", "—")),
                "TG < 0": str(v["negative_cells"]),
                "below −1": str(v["cells_below_minus_1"]),
                "mean TG": pm(v["tg"]["mean"], v["tg"]["std"]),
                "≥ +1 on every seed": ", ".join(v.get("positive_on_every_seed_ge_1", [])) or "—",
            }
            for m, v in r.get("methods", {}).items()
        ]
        return pd.DataFrame(rows)

    def summary(self, run: Run) -> dict[str, Any]:
        methods = (run.results or {}).get("methods", {})
        return {
            **super().summary(run),
            "target": ", ".join((run.results or {}).get("domains", [])),
            "method": "mean TG: "
            + ", ".join(f"{m} {num(v['mean_tg'], signed=True)}" for m, v in methods.items()),
        }

    def figures(self, run: Run) -> list[FigureSpec]:
        table = self._table(run)
        if table is None:
            return []
        limit = max(1.0, float(table.groupby(["method", "target", "aux"])["tg"].mean().abs().max()))
        label, units = _pairwise_units(run.results)
        caption = (
            f"TG ({units}) of training each row's target with each column's domain as the only "
            "auxiliary task, mean over seeds ± seed std (one seed: ± the paired test-set SE "
            "of its TG). Red cells (below 0) are negative transfer; faded, hatched cells are "
            "within noise (|TG| not above twice that ±). Every method shares one colour scale."
        )
        return [
            FigureSpec(
                f"pairwise_{m}",
                f"Pairwise transfer: {m}",
                caption,
                lambda m=m: fig.pairwise_figure(table, m, limit, label),
            )
            for m in table["method"].drop_duplicates()
        ]

    def tables(self, run: Run) -> list[TableSpec]:
        r = run.results or {}
        methods = r.get("methods", {})
        if not methods:
            return []
        frame = pd.DataFrame({m: v.get("regime_per_target", {}) for m, v in methods.items()})
        frame = frame.map(lambda x: regime_text(x, r.get("seeds")) if isinstance(x, str) else "")
        frame = frame.rename_axis("target").reset_index()
        caption = " ".join(
            x for x in ("Each cell is one auxiliary domain.", r.get("regime_rule")) if x
        )
        if r.get("regime_basis"):
            caption += f" Rests on {r['regime_basis']}."
        return [TableSpec("Regime per target (over its auxiliary domains)", frame, caption)]


def _pairwise_units(r: dict[str, Any] | None) -> tuple[str, str]:
    """(colour-bar label, caption words) of a pairwise map's TG. Domains of a classification
    benchmark share the accuracy; the tasks of a dense benchmark each have their own primary
    metric (the summary records the first target's), so their TGs are each in its own."""
    metric, higher = target_metric(r)
    if metric == "acc":
        return fig.tg_axis_label(), fig.tg_units()
    units = "test, each target in its own primary metric, turned so that > 0 helped"
    return f"TG vs STL ({units})", units


@_register("affinity")
class AffinityView(View):
    title = "predicted transfer (affinity)"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        against = r.get("against")
        if not against:
            return pd.DataFrame(
                [
                    {
                        "tasks": ", ".join(r.get("tasks", [])),
                        "measurements": str(r.get("measurements", "")),
                        "steps": str(r.get("steps", "")),
                        "compute (s)": num(r.get("compute_s"), 1),
                    }
                ]
            )
        rows = []
        for predictor, s in against.get("scores", {}).items():
            share = s.get("sign_share")
            mark = " (best)" if predictor == against.get("best") else ""
            rows.append(
                {
                    "predictor": predictor + mark,
                    "Spearman, all cells": num(s.get("spearman"), signed=True),
                    "Spearman, per target (mean)": num(
                        s.get("spearman_per_target_mean"), signed=True
                    ),
                    "sign share": "—" if share is None else f"{share:.0%}",
                    "top-1 regret (mean)": num(s.get("mean_regret")),
                }
            )
        return pd.DataFrame(rows)

    def summary(self, run: Run) -> dict[str, Any]:
        r = run.results or {}
        against = r.get("against") or {}
        best = against.get("best")
        score = (against.get("scores", {}).get(best) or {}).get("spearman") if best else None
        return {
            **super().summary(run),
            "target": ", ".join(r.get("tasks", [])),
            "method": f"affinity: best {best} (ρ {num(score, signed=True)})"
            if best
            else "affinity",
        }

    def figures(self, run: Run) -> list[FigureSpec]:
        from ntlab.analysis.affinity import predictors_of

        table = run.table("affinity.csv")
        if table is None:
            return []
        captions = {
            "lookahead": "Lookahead affinity Z = 1 − L_target(θ − η g_aux) / L_target(θ) per "
            "(target row, auxiliary column), mean over the measurements: > 0 (blue), a step "
            "on the auxiliary task lowered the target's held-out loss.",
            "lookahead-adam": "The lookahead affinity with the step training takes: Adam's "
            "preconditioned η g_aux / (√v̂ + ε) instead of a plain η g_aux.",
            "cosine": "Cosine of the target's and the auxiliary task's gradients on the shared "
            "parameters, mean over the measurements (blue: aligned).",
            "shift": "Minus the shift between the tasks' inputs in the backbone's features "
            "(squared distance of the means over their average spread): closer to 0, more "
            "alike. Tasks that share their inputs have none.",
            "two-level": "Derived from the cosine and the shift, not measured: the target's "
            "mean gradient cosine with the other tasks, standardised over the targets (the "
            "same in a whole row), plus the shift standardised within the target's row.",
        }
        specs = [
            FigureSpec(
                f"affinity_{p}",
                f"Predictor: {p}",
                captions.get(p, p),
                lambda p=p: fig.affinity_figure(table, p),
            )
            for p in predictors_of(table)
        ]
        measured = run.table("measured.csv")
        against = (run.results or {}).get("against")
        if measured is not None and against and against.get("best"):
            best = against["best"]
            label, units = _pairwise_units(run.results)
            specs.append(
                FigureSpec(
                    "affinity_scatter",
                    "Every predictor against the measured transfer",
                    f"Each cell of the map: a predictor's value (x) against its measured TG "
                    f"({units}; y, mean over the pairwise run's seeds ± their std). ρ is the "
                    "Spearman rank correlation over the cells.",
                    lambda: fig.affinity_scatter_figure(table, measured, label),
                )
            )
            specs.append(
                FigureSpec(
                    "affinity_vs_measured",
                    f"Measured transfer beside the best predictor ({best})",
                    f"Left: the measured TG ({units}) of the pairwise run, mean over its seeds. "
                    f"Middle: {best}, in the same layout. Right: every cell, predicted against "
                    "measured; ρ is their Spearman rank correlation.",
                    lambda: fig.affinity_vs_measured_figure(table, measured, best, label),
                )
            )
        return specs

    def tables(self, run: Run) -> list[TableSpec]:
        r = run.results or {}
        out = []
        against = r.get("against")
        if against:
            best = against.get("best")
            rows = [
                {
                    "target": t,
                    "ranked first": v["first"],
                    "its TG": num(v["first_tg"], signed=True),
                    "best TG": num(v["best_tg"], signed=True),
                    "mean TG": num(v["mean_tg"], signed=True),
                    "Spearman in the row": num(v["spearman"], signed=True),
                }
                for t, v in against["scores"].get(best, {}).get("targets", {}).items()
            ]
            ceiling = against.get("ceiling")
            out.append(
                TableSpec(
                    f"Per target: the auxiliary task {best} ranks first",
                    pd.DataFrame(rows),
                    "The measured TG of that task against the row's best and mean. The map's "
                    "own seed-to-seed Spearman correlation, the ceiling of any prediction: "
                    f"{num(ceiling, signed=True)}.",
                )
            )
        selection = r.get("selection")
        if selection:
            rows = [
                {
                    "target": t,
                    "selected": ", ".join(v["selected"]),
                    "EW, selected": num(v["ew_selected"], signed=True),
                    "EW, all": num(v["ew_all"], signed=True),
                    "ForkMerge, selected": num(v["forkmerge_selected"], signed=True),
                    "ForkMerge, all": num(v["forkmerge_all"], signed=True),
                }
                for t, v in selection["targets"].items()
            ]
            out.append(
                TableSpec(
                    f"Auxiliary-task selection: the {selection['k']} that "
                    f"{selection['predictor']} ranks first",
                    pd.DataFrame(rows),
                    "TG against each target's STL run, one seed, trained on the selection and "
                    "on every other task mixed.",
                )
            )
        return out


@_register("ternary")
class TernaryView(View):
    title = "ternary map of merged models"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        points = [
            ("best on validation", r["best"]),
            ("best on test (hindsight, optimistic)", r["best_test_point"]),
            ("centre", r["centre"]),
        ]
        rows = [_merge_row(name, point, _weights(point["weights"])) for name, point in points]
        rows += [_merge_row(f"corner: {name}", v, "") for name, v in r.get("corners", {}).items()]
        return pd.DataFrame(rows)

    def summary(self, run: Run) -> dict[str, Any]:
        best = (run.results or {}).get("best") or {}
        return {
            **super().summary(run),
            "method": f"merge Λ = {_weights(best.get('weights', []))}",
            "tg": best.get("tg"),
            "tg_std": best.get("tg_se"),  # the ± of TG: the paired test-set SE
            "effect": best.get("effect"),
            "regime": run_effect(best) if "effect" in best else "",
        }

    def figures(self, run: Run) -> list[FigureSpec]:
        table = run.table("ternary.csv")
        labels = run.config.get("branches")
        if table is None or not labels:
            return []
        table = table.assign(best=table["best"].astype(str) == "True")
        metric, higher = target_metric(run.results)
        caption = (
            f"TG ({tg_units(run.results)}) of the merged model Σ Λ_b θ_b at every point of the "
            "simplex; each corner is "
            "one branch alone. Blue gains, red (below 0) is negative transfer; the star is "
            "the point chosen on validation. Hatched: merges whose TG is within noise "
            "(within twice its paired test-set SE)."
        )
        return [
            FigureSpec(
                "ternary",
                "Merging three branches",
                caption,
                lambda: fig.ternary_figure(table, labels, metric, higher),
            )
        ]


@_register("compare")
class CompareView(View):
    title = "methods compared"

    def rows(self, r: dict[str, Any]) -> pd.DataFrame | None:
        rows = []
        primary = target_metric(r)[0]
        others = {m: h for m, h in (r.get("delta_m_over") or {}).items() if m != primary}
        for rank, method in enumerate(r["ranking"], start=1):
            v = r["methods"][method]
            lams = v.get("lam_per_seed")
            stats = v.get("metrics") or {}
            rows.append(
                {
                    "rank": str(rank),
                    "method": method
                    + (f" (λ = {', '.join(lam_text(x) for x in lams)})" if lams else ""),
                    score_header(r, "test"): pm(
                        v["test_score"]["mean"], v["test_score"]["std"], signed=False
                    ),
                    **{
                        metric_header(m, h, "test"): pm(
                            stats[m]["mean"], stats[m].get("std"), signed=False
                        )
                        if m in stats
                        else ""
                        for m, h in others.items()
                    },
                    "TG vs STL (test)": tg_pm(v["tg"], v["seeds"]),
                    "transfer": "reference" if method == "stl" else _method_effect(v),
                    "Δm (%)": pm(v["delta_m"]["mean"], v["delta_m"]["std"]),
                    "seeds": str(v["seeds"]),
                }
            )
        return pd.DataFrame(rows)

    def summary(self, run: Run) -> dict[str, Any]:
        r = run.results or {}
        best = (r.get("ranking") or [""])[0]
        stat = (r.get("methods") or {}).get(best, {})
        return {
            **super().summary(run),
            "method": f"best: {best}"
            + (f"; forkmerge #{r['forkmerge_rank']}" if "forkmerge_rank" in r else ""),
            "tg": stat.get("tg", {}).get("mean"),
            "tg_std": stat.get("tg", {}).get("se" if stat.get("seeds") == 1 else "std"),
            "regime": _method_effect(stat) if stat else "",
        }

    def tables(self, run: Run) -> list[TableSpec]:
        r = run.results or {}
        if not r.get("regime_rule"):
            return []
        frame = pd.DataFrame([{"quantity": "rests on", "value": r.get("regime_basis", "")}])
        return [TableSpec("Transfer of each method against STL", frame, r["regime_rule"])]

    def figures(self, run: Run) -> list[FigureSpec]:
        table = run.table("compare.csv")
        if table is not None:
            rows = table.pivot_table(
                index=["method", "seed"], columns="metric", values="value", sort=False
            ).reset_index()
        else:  # a run that stopped early: its finished (method, seed) rows
            rows = run.table("checkpoints/rows.csv")
            if rows is None:
                return []
        data = _bar_rows(rows, (run.results or {}).get("methods", {}))
        metric, higher = target_metric(run.results)
        caption = (
            "TG of each method over the STL model of the same budget and seed "
            f"({tg_units(run.results)}), mean ± std over seeds; with one seed the error bars "
            "are ± the paired "
            "test-set SE of its TG. Red bars, left of 0, are negative transfer: the method did "
            "worse than training the target alone; faded, hatched bars are within noise."
        )
        return [
            FigureSpec(
                "compare",
                "Transfer gain per method",
                caption,
                lambda: fig.tg_bar_figure(
                    data,
                    "Transfer gain per method (hatched: within noise)",
                    fig.tg_axis_label(metric, higher),
                ),
            )
        ]


def _bar_rows(rows: pd.DataFrame, methods: dict[str, Any]) -> pd.DataFrame:
    """One bar per method: its mean TG, the ± (seed std, or one seed's test-set SE) and its
    effect (from results.json where it is there)."""
    out = []
    for method, group in rows.groupby("method", sort=False):
        several = len(group) > 1
        if several:
            err = group["tg"].std(ddof=1)
        else:
            err = group["tg_se"].iloc[0] if "tg_se" in group else None
        effect = (methods.get(method) or {}).get("effect")
        out.append({"label": method, "tg": group["tg"].mean(), "tg_err": err, "effect": effect})
    return pd.DataFrame(out)


def _method_effect(stat: dict[str, Any]) -> str:
    """A method's transfer by the noise rule; older results without it: by its mean TG."""
    if stat.get("effect") in EFFECT_LABELS:
        return effect_text(stat["effect"], stat.get("seeds"))
    return ""  # an older result without its effect: no noise estimate to judge it by


def _merge_row(point: str, v: dict[str, Any], weights: str) -> dict[str, str]:
    """One merged model of a ternary map: its TG ± paired test-set SE and verdict (results
    written before they were recorded: the TG alone)."""
    return {
        "point": point,
        "Λ": weights,
        "TG vs STL (test)": pm(v["tg"], v.get("tg_se"), always="tg_se" in v),
        "transfer": run_effect(v) if "effect" in v else "",
    }


def _weights(w: list[float]) -> str:
    return "(" + ", ".join(f"{x:g}" for x in w) + ")"


def run_target(run: Run) -> str:
    """The target a run is about, as its summary names it ("" where it has none)."""
    try:
        return str(view_for(run).summary(run).get("target") or "")
    except Exception:  # a damaged run still takes its place on the page
        return ""


def grouped_by_target(runs: list[Run]) -> list[Run]:
    """The runs with those of one target together, targets in the order they first come,
    runs of a target in the order given."""
    targets = [run_target(run) for run in runs]
    first = {t: i for i, t in reversed(list(enumerate(targets)))}
    order = sorted(range(len(runs)), key=lambda i: (first[targets[i]], i))
    return [runs[i] for i in order]


def comparison(runs: list[Run]) -> tuple[pd.DataFrame, list[FigureSpec]]:
    """The overview of several runs: one row each, grouped by target (targets in the order
    they first come) and ranked by TG within a target, and TG bars in the same groups."""
    rows = []
    summaries = [view_for(run).summary(run) for run in runs]
    metrics = [(s.get("metric", "acc"), s.get("higher_is_better", True)) for s in summaries]
    one = len(set(metrics)) <= 1
    metric, higher = metrics[0] if metrics else ("acc", True)
    score = metric_header(metric, higher, "test") if one else "test score"
    for run, s, (m, h) in zip(runs, summaries, metrics):
        shown = num(s["test_score"])
        if not one and shown:
            shown += f" {metric_label(m)} {fig.direction_arrow(h)}"
        rows.append(
            {
                "target": s["target"],
                "rank": "",
                "run": run.name,
                "command": run.command,
                "state": run.state,
                "method": s["method"],
                score: shown,
                "TG vs STL (test)": pm(s["tg"], s["tg_std"], always=s["tg_std"] is not None),
                "regime": s["regime"],
                "_tg": s["tg"],
                "_tg_std": s["tg_std"],
            }
        )
    frame = pd.DataFrame(rows)
    frame["_group"] = frame["target"].map(
        {t: i for i, t in reversed(list(enumerate(frame["target"])))}
    )
    frame["_key"] = -pd.to_numeric(frame["_tg"], errors="coerce")
    frame = frame.sort_values(["_group", "_key"], kind="stable", na_position="last")
    ranks = frame[frame["_key"].notna()].groupby("_group").cumcount() + 1
    frame.loc[ranks.index, "rank"] = ranks.astype(str)
    bars = frame[frame["_tg"].notna()]
    specs = []
    if len(bars) >= 2:
        data = pd.DataFrame(
            {
                "label": [
                    f"{r} ({m})" if len(str(m)) < 40 else r
                    for r, m in zip(bars["run"], bars["method"])
                ],
                "tg": bars["_tg"].astype(float),
                "tg_err": pd.to_numeric(bars["_tg_std"], errors="coerce"),
                "group": bars["target"].astype(str),
            }
        )
        units = fig.tg_units(metric, higher) if one else "each in its target's primary metric"
        xlabel = fig.tg_axis_label(metric, higher) if one else f"TG vs STL (test, {units})"
        specs.append(
            FigureSpec(
                "comparison",
                "Transfer gain of each run",
                f"TG of each run over the STL model of its own budget and seed ({units}; for "
                "sweeps the best λ), ± its seed std or, with one seed, its paired "
                "test-set SE; runs grouped by target and sorted within it. Red bars, left of 0, "
                "are negative transfer.",
                lambda: fig.tg_bar_figure(data, xlabel=xlabel),
            )
        )
    shown = frame.drop(columns=["_tg", "_tg_std", "_group", "_key"])
    return shown.reset_index(drop=True), specs


def iter_views() -> Iterator[str]:
    return iter(VIEWS)
