"""Options shared by the commands, declared once.

Each group of options is the signature of a template function (`training_options`,
`run_options`); `@command(own_options, training_options, run_options)` gives a command all
of them, and the command receives them as one dict. Options whose default comes from
`--preset` default to None here; `resolve_options` fills them in (built-in default <
preset < --config file < command line).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from ntlab.cli.common import preset_help
from ntlab.core.runner import TrainConfig, resolve_aux
from ntlab.data import BENCHMARKS
from ntlab.presets import PRESETS

Target = Annotated[
    str, typer.Option("--target", "-t", help="The target task (a domain of the benchmark).")
]
Aux = Annotated[
    str, typer.Option(help="Auxiliary tasks, comma-separated, or `all` (every other domain).")
]
Benchmark = Annotated[str, typer.Option(help=f"Benchmark: {', '.join(BENCHMARKS)}.")]
Steps = Annotated[int | None, typer.Option(help=f"Optimiser steps. {preset_help('steps')}")]
BatchSize = Annotated[
    int | None, typer.Option(help=f"Mini-batch size per loss term. {preset_help('batch_size')}")
]
LR = Annotated[float | None, typer.Option(help=f"Learning rate. {preset_help('lr')}")]
Optimizer = Annotated[
    str | None,
    typer.Option(
        help=f"Optimiser: adam or sgd (nesterov momentum 0.9). {preset_help('optimizer')}"
    ),
]
WeightDecay = Annotated[
    float | None,
    typer.Option(help=f"Weight decay (L2) of the optimiser. {preset_help('weight_decay')}"),
]
Schedule = Annotated[
    str | None,
    typer.Option(help=f"Learning-rate schedule: constant or cosine. {preset_help('schedule')}"),
]
Backbone = Annotated[str, typer.Option(help="Backbone: cnn (small, fast on CPU) or resnet18.")]
Width = Annotated[int, typer.Option(help="Channels of the cnn backbone's first layer.")]
Weights = Annotated[
    Path | None, typer.Option(help="A local state-dict file for the backbone (no download).")
]
Seed = Annotated[int, typer.Option(help="Seed of initialisation and batch order.")]
Device = Annotated[str, typer.Option(help="auto (cuda if available), cpu, or cuda[:N].")]
EvalEvery = Annotated[
    int | None,
    typer.Option(help=f"Steps between target validation checks. {preset_help('eval_every')}"),
]
Preset = Annotated[
    str | None, typer.Option(help=f"Option bundle: {', '.join(PRESETS)} [default: default].")
]
Config = Annotated[
    Path | None,
    typer.Option(help="A TOML file of options (keys as option names); the command line wins."),
]
Overwrite = Annotated[bool, typer.Option(help="Replace a finished run in --out.")]
Out = Annotated[
    Path | None,
    typer.Option(help="Run directory [default: a new folder runs/COMMAND-…-TIME]."),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or table; print the run directory.")
]


Lams = Annotated[str, typer.Option(help="λ grid, comma-separated (each ≥ 0).")]
Seeds = Annotated[
    str,
    typer.Option("--seeds", "--seed", help="Seeds, comma-separated; everything is run per seed."),
]
MergeEvery = Annotated[
    int | None,
    typer.Option(help=f"Δt of ForkMerge: steps between merges. {preset_help('merge_every')}"),
]


def train_config(opts: dict[str, Any], tasks: list[str], **overrides: Any) -> TrainConfig:
    """The TrainConfig of resolved options (aux checked against the benchmark's tasks)."""
    names = {f.name for f in fields(TrainConfig)} - {"aux"}
    values = {k: v for k, v in opts.items() if k in names}
    values.update(overrides)
    if values.get("weights") is not None:
        values["weights"] = str(values["weights"])
    return TrainConfig(**values, aux=resolve_aux(tasks, opts["target"], opts["aux"]))


def training_options(
    benchmark: Benchmark = "digits",
    steps: Steps = None,
    batch_size: BatchSize = None,
    lr: LR = None,
    optimizer: Optimizer = None,
    weight_decay: WeightDecay = None,
    schedule: Schedule = None,
    backbone: Backbone = "cnn",
    width: Width = 16,
    weights: Weights = None,
    seed: Seed = 0,
    device: Device = "auto",
    eval_every: EvalEvery = None,
) -> None:
    """What decides a training (the fields of TrainConfig, less target/method/aux/λ)."""


FigureFormat = Annotated[
    str,
    typer.Option(
        "--format", help="Figure files in the run directory and in report.html: png or svg."
    ),
]


def run_options(
    preset: Preset = None,
    config: Config = None,
    out: Out = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    format: FigureFormat = "png",
) -> None:
    """Where a command writes and how it talks."""


def command(*templates: Callable[..., None], exclude: tuple[str, ...] = ()):
    """Give a command the options of `templates` (less `exclude`, which the command declares
    its own way); it is called as `fn(ctx, values)`."""
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    for template in templates:
        for p in inspect.signature(template, eval_str=True).parameters.values():
            if p.name not in exclude:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    def decorate(fn: Callable[[typer.Context, dict[str, Any]], None]):
        @functools.wraps(fn)
        def wrapper(ctx: typer.Context, **values: Any) -> None:
            return fn(ctx, values)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return wrapper

    return decorate
