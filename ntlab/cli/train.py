"""`ntlab train`: one training with a weighting method, its STL baseline and transfer gain."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from ntlab.cli.common import (
    StepProgress,
    console,
    default_out,
    guarded,
    preset_help,
    resolve_options,
)
from ntlab.core.runner import (
    TrainConfig,
    resolve_aux,
    run_training,
    stl_baseline,
    store_stl,
    validate,
    with_transfer_gain,
)
from ntlab.data import BENCHMARKS, get_benchmark
from ntlab.methods import METHODS
from ntlab.presets import PRESETS
from ntlab.runs import RunDir

METHOD_HELP = "; ".join(f"{m}: {METHODS.get(m).summary}" for m in METHODS)


def train_command(
    ctx: typer.Context,
    target: str = typer.Option(
        ..., "--target", "-t", help="The target task (a domain of the benchmark)."
    ),
    method: str = typer.Option("stl", "--method", "-m", help=f"Weighting method. {METHOD_HELP}."),
    aux: str = typer.Option(
        "all", help="Auxiliary tasks, comma-separated, or `all` (every other domain)."
    ),
    lam: float = typer.Option(
        1.0, "--lam", help="λ of `fixed`: the weight of the mixed auxiliary loss (≥ 0)."
    ),
    benchmark: str = typer.Option("digits", help=f"Benchmark: {', '.join(BENCHMARKS)}."),
    steps: int | None = typer.Option(None, help=f"Optimiser steps. {preset_help('steps')}"),
    batch_size: int | None = typer.Option(
        None, help=f"Mini-batch size per loss term. {preset_help('batch_size')}"
    ),
    lr: float | None = typer.Option(None, help=f"Learning rate. {preset_help('lr')}"),
    optimizer: str = typer.Option("adam", help="Optimiser: adam or sgd (nesterov momentum 0.9)."),
    weight_decay: float = typer.Option(0.0, help="Weight decay (L2) of the optimiser."),
    schedule: str | None = typer.Option(
        None,
        help=f"Learning-rate schedule: constant or cosine. {preset_help('schedule')}",
    ),
    backbone: str = typer.Option("cnn", help="Backbone: cnn (small, fast on CPU) or resnet18."),
    width: int = typer.Option(16, help="Channels of the cnn backbone's first layer."),
    weights: Path | None = typer.Option(
        None, help="A local state-dict file for the backbone (no download)."
    ),
    seed: int = typer.Option(0, help="Seed of initialisation and batch order."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, or cuda[:N]."),
    eval_every: int | None = typer.Option(
        None, help=f"Steps between target validation checks. {preset_help('eval_every')}"
    ),
    preset: str | None = typer.Option(
        None, help=f"Option bundle: {', '.join(PRESETS)} [default: default]."
    ),
    config: Path | None = typer.Option(
        None, help="A TOML file of options (keys as option names); the command line wins."
    ),
    out: Path | None = typer.Option(
        None, help="Run directory [default: runs/train-METHOD-TARGET-TIME]."
    ),
    overwrite: bool = typer.Option(False, help="Replace a finished run in --out."),
    baseline: bool = typer.Option(
        True, help="Compute transfer gain against the STL run (cached) of the same budget."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or table; print the run directory."
    ),
) -> None:
    """Train the target with a weighting method and report its transfer gain over STL.

    Writes config.json, status.json, metrics.csv (step, task, split, metric, value) and
    results.json (target accuracy; for methods other than stl, `transfer_gain` = test
    accuracy minus that of the STL run with the same budget and seed, reused from the cache).
    """
    with guarded():
        opts = resolve_options(ctx, {k: v for k, v in locals().items() if k != "ctx"}, config)
        bench = get_benchmark(opts["benchmark"])
        tasks = bench.tasks()
        cfg_fields = set(TrainConfig.__dataclass_fields__)
        cfg = TrainConfig(
            **{k: v for k, v in opts.items() if k in cfg_fields and k != "aux"},
            aux=resolve_aux(tasks, opts["target"], opts["aux"]),
        )
        if cfg.weights is not None:
            cfg.weights = str(cfg.weights)
        validate(cfg)
        bench.fingerprint()  # fails early, with the fix, when the data is not prepared
        run = RunDir(
            opts["out"] or default_out("train", cfg.method, cfg.target), overwrite=opts["overwrite"]
        )
    with guarded(run):
        run.start(
            "train", {"train": asdict(cfg), "preset": opts["preset"], "data": bench.fingerprint()}
        )
        with StepProgress(opts["quiet"]) as progress:
            outcome = run_training(
                cfg, on_step=progress.callback(f"{cfg.method} → {cfg.target}", cfg.steps)
            )
            results = outcome.results
            if cfg.method == "stl":
                store_stl(cfg, outcome)
            elif opts["baseline"]:
                stl, source = stl_baseline(
                    cfg, on_step=progress.callback(f"stl → {cfg.target}", cfg.steps)
                )
                results = with_transfer_gain(results, stl, source)
        run.write_table("metrics.csv", pd.DataFrame(outcome.metrics))
        run.finish(results)
        print_summary(results, run.path, opts["quiet"])


def print_summary(results: dict, path: Path, quiet: bool) -> None:
    if quiet:
        console.print(str(path))
        return
    table = Table(
        title=f"{results['method']} → {results['target']} ({results['steps']} steps)",
        title_justify="left",
    )
    for col in ("model", "val acc", "test acc", "TG (test)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row(
        results["method"],
        f"{results['val_acc']:.2f}",
        f"{results['test_acc']:.2f}",
        f"{results['transfer_gain']:+.2f}" if "transfer_gain" in results else "",
    )
    if "stl" in results:
        stl = results["stl"]
        table.add_row(
            f"stl ({stl['source']})", f"{stl['val_acc']:.2f}", f"{stl['test_acc']:.2f}", "0"
        )
    console.print(table)
    console.print(f"run directory: {path}")
