"""`ntlab train`: one training with a weighting method, its STL baseline and transfer gain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ntlab import catalog
from ntlab.cli import options as opt
from ntlab.cli.common import (
    StepProgress,
    complete,
    console,
    default_out,
    gain_view,
    guarded,
    metrics_line,
    print_paths,
    resolve_options,
    results_table,
    run_parallel,
    score_headers,
    tg_cells,
    train_record,
    with_delta_m,
)
from ntlab.config import ForkMergeOptions
from ntlab.runs import RunDir, atomic_write_text


def _train_options(
    target: opt.Target = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="Weighting method: one of those `ntlab methods` lists with their papers ("
            + ", ".join(catalog.method_names())
            + ").",
            **opt.choice(tuple(catalog.method_names()), metavar="METHOD"),
        ),
    ] = "stl",
    aux: opt.Aux = "all",
    lam: Annotated[
        float,
        typer.Option("--lam", help="λ of `fixed`: the weight of the mixed auxiliary loss (≥ 0)."),
    ] = 1.0,
    baseline: Annotated[
        bool,
        typer.Option(help="Compute transfer gain against the STL run (cached) of the same budget."),
    ] = True,
    merge_every: opt.MergeEvery = None,
    merge_heads: opt.MergeHeads = ForkMergeOptions.merge_heads,
) -> None: ...


@opt.command(_train_options, opt.training_options, opt.parallel_options, opt.run_options)
def train_command(ctx: typer.Context, values: dict) -> None:
    """Train the target with a weighting method and report its transfer gain over STL.

    Writes config.json, status.json, metrics.csv (step, task, split, metric, value),
    stl_metrics.csv (the STL run's target validation score against the step, same
    columns), model.pt (the final model), for a dense target predictions.pt (a few test
    images with each dense task's truth and prediction) and results.json (the target's
    metrics, its primary one as val_score / test_score; for methods other than stl,
    `transfer_gain` = the test score's gain over the STL run with the same budget and seed,
    turned so that > 0 helps when lower is better). Both trainings go through the run
    cache: an identical training is read, not trained again, and two processes that want it
    at once train it once.
    """

    from ntlab.analysis.compare import PROCEDURES, check_method
    from ntlab.core.runner import (
        METRICS_FILE,
        MODEL_FILE,
        STL_METRICS_FILE,
        run_cache_dir,
        save_model,
        stl_baseline,
        stl_curve_csv,
        trained_model,
        validate,
        with_transfer_gain,
    )
    from ntlab.report.predictions import write_predictions

    with guarded():
        opts = resolve_options(ctx, values)
        bench = opt.benchmark(opts)
        check_method(opts["method"])
        if opts["method"] in PROCEDURES:
            return _train_procedure(opts, bench)
        cfg = opt.train_config(opts, bench.tasks())
        validate(cfg)
        bench.fingerprint()  # fails early, with the fix, when the data is not prepared
        run = RunDir(
            opts["out"] or default_out("train", cfg.method, cfg.target), overwrite=opts["overwrite"]
        )
    with guarded(run):
        run.start(
            "train",
            {"train": train_record(cfg), "preset": opts["preset"], "data": bench.fingerprint()},
        )
        with StepProgress(opts["quiet"]) as progress:
            model, data, results, own_source = trained_model(
                cfg, on_step=progress.callback(f"{cfg.method} → {cfg.target}", cfg.steps)
            )
            results = {**results, "source": own_source}
            if cfg.method != "stl" and opts["baseline"]:
                stl, source = stl_baseline(
                    cfg, on_step=progress.callback(f"stl → {cfg.target}", cfg.steps)
                )
                results = with_delta_m(with_transfer_gain(results, stl, source), stl)
                stl_curve = stl_curve_csv(cfg)
                if stl_curve:
                    atomic_write_text(run.path / STL_METRICS_FILE, stl_curve)
        run.write_table("metrics.csv", _cached_metrics(run_cache_dir(cfg) / METRICS_FILE))
        save_model(run.path / MODEL_FILE, model, cfg)
        write_predictions(run.path, model, data, cfg.target)  # a dense target's figure
        complete(run, results, opts["format"])
        print_summary(results, run.path, opts["quiet"])


def _cached_metrics(path: Path):
    """The training's tidy metrics as its cache entry keeps them (none for an entry stored
    without them: the run then has the header alone)."""
    import pandas as pd

    columns = ["step", "task", "split", "metric", "value"]
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return pd.DataFrame(columns=columns)


def print_summary(results: dict, path: Path, quiet: bool) -> None:
    from ntlab.metrics import rule_caption, tg_sentence

    if quiet:
        console.print(str(path))
        return
    table = results_table(
        f"{results['method']} → {results['target']} ({results['steps']} steps)",
        ["model", *score_headers(results), "TG (test)", "transfer"],
        left=("model", "transfer"),
    )
    cached = " (cache)" if results.get("source") == "cache" else ""
    table.add_row(
        results["method"] + cached,
        f"{results['val_score']:.2f}",
        f"{results['test_score']:.2f}",
        *tg_cells(results),
    )
    if "stl" in results:
        stl = results["stl"]
        table.add_row(
            f"stl ({stl['source']})",
            f"{stl['val_score']:.2f}",
            f"{stl['test_score']:.2f}",
            "0",
            "reference",
        )
        table.caption = rule_caption(1)
    console.print(table)
    if "transfer_gain" in results and results.get("effect"):
        subject = f"{results['method']} vs STL on {results['target']}"
        sentence = tg_sentence(subject, gain_view(results), results.get("metric", "acc"))
        console.print(sentence, highlight=False, soft_wrap=True)
    line = metrics_line(results)
    if line:
        console.print(line, highlight=False, soft_wrap=True)
    print_paths(path)


def _train_procedure(opts: dict, bench) -> None:
    """`--method grid-search|forkmerge`: several trainings (cached), reported as one; with
    --jobs or --executor ray they are trained at once, then read from the cache."""
    from ntlab.analysis.compare import method_jobs, method_row
    from ntlab.core.forkmerge import ForkMergeOptions, per_task_branches, validate_forkmerge
    from ntlab.core.runner import validate
    from ntlab.metrics import gain_effect

    method = opts["method"]
    cfg = opt.train_config(opts, bench.tasks(), method="ew")
    validate(cfg)
    fm = ForkMergeOptions(merge_every=opts["merge_every"], merge_heads=opts["merge_heads"])
    if method == "forkmerge":
        validate_forkmerge(cfg, per_task_branches(cfg.target, cfg.aux), fm)
    settings = opt.parallel_settings(opts)
    bench.fingerprint()
    run = RunDir(
        opts["out"] or default_out("train", method, cfg.target), overwrite=opts["overwrite"]
    )
    with guarded(run):
        run.start(
            "train",
            {
                "train": {**train_record(cfg), "method": method},
                "preset": opts["preset"],
                "data": bench.fingerprint(),
            },
        )  # noqa: E501
        with StepProgress(opts["quiet"]) as progress:
            if settings.parallel:  # every training at once into the cache, then read it
                jobs = method_jobs(cfg, method, cfg.seed, fm)
                run_parallel(jobs, settings, progress).raise_failed("trainings")

            def on_run(label, run_cfg):
                if settings.parallel:
                    return None
                fm = label == "forkmerge"
                total = run_cfg.steps * (len(run_cfg.aux) + 1 if fm else 1)
                return progress.callback(f"{label} → {run_cfg.target}", total, count=fm)

            row = method_row(cfg, method, cfg.seed, fm, on_run=on_run)
        results = {
            "target": cfg.target,
            "method": method,
            "aux": cfg.aux,
            "steps": cfg.steps,
            "val_score": row["val_score"],
            "test_score": row["test_score"],
            "stl": {
                "val_score": row["stl_val_score"],
                "test_score": row["stl_test_score"],
                "source": "cache",
            },
            "transfer_gain": row["tg"],
            "tg_se": row["tg_se"],
            "tg_se_kind": row["tg_se_kind"],
            "effect": gain_effect([row["tg"]], row["tg_se"]),
            "transfer_gain_val": row["tg_val"],
            **({"lam": row["lam"]} if "lam" in row else {}),
        }
        complete(run, results, opts["format"])
        print_summary(results, run.path, opts["quiet"])
