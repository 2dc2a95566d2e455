"""`ntlab gcs`, `ntlab csd`, `ntlab tsne`: why transfer turns negative (paper Figs. 2, 3)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ntlab.checks import check_steps
from ntlab.cli import options as opt
from ntlab.cli.common import (
    CheckpointRows,
    Parallel,
    StepProgress,
    check_resumable,
    complete,
    console,
    default_out,
    guarded,
    metric_fields,
    parse_numbers,
    parse_seeds,
    preset_help,
    print_paths,
    resolve_options,
    results_table,
    resume_note,
    run_parallel,
    run_record,
)
from ntlab.config import GCS_LAMS, SWEEP_LAMS, TSNE_LAMS, GcsOptions, lams_text
from ntlab.errors import NtlabError
from ntlab.runs import RunDir

if TYPE_CHECKING:
    from ntlab.core.runner import TrainConfig

CSD_ROWS = Path("checkpoints") / "rows.csv"  # one row per finished training (λ, seed)


def _lams(text: str) -> list[float]:
    from ntlab.analysis.common import check_lams

    return check_lams(parse_numbers(text, "--lams"))


def _start(ctx: typer.Context, values: dict[str, Any]) -> tuple[dict, TrainConfig, Any]:
    """Resolve options, check the training they describe and that the data is prepared."""
    from ntlab.core.runner import validate

    opts = resolve_options(ctx, values)
    bench = opt.benchmark(opts)
    if "pretrain_steps" in opts:
        check_steps("--pretrain-steps", opts["pretrain_steps"])
    overrides = {"steps": opts["pretrain_steps"]} if "pretrain_steps" in opts else {}
    if "seeds" in opts:
        overrides["seed"] = 0
    cfg = opt.train_config(opts, bench.tasks(), method="stl", **overrides)
    validate(cfg)
    bench.fingerprint()  # fails early, with the fix, when the data is not prepared
    return opts, cfg, bench


def _need_classification(cfg: TrainConfig, command: str, what: str) -> None:
    """csd and tsne read what only a classification target has: exit 2 otherwise."""
    from ntlab.core.runner import target_spec

    spec = target_spec(cfg)
    if not spec.is_classification:
        raise NtlabError(
            f"{command} needs a classification target: it reads {what}; {cfg.target} is a "
            f"{spec.description or 'task of another kind'}; gcs, sweep and pairwise work on it"
        )


def _need_same_classes(bench, cfg: TrainConfig) -> None:
    """tsne draws the auxiliary tasks' images among the target's, coloured by class: each
    auxiliary task must classify the target's classes (domains do; `ssl`'s rotation and
    exemplar do not)."""
    specs = getattr(bench, "specs", None)
    if specs is None:  # digits and image lists: every domain has the target's classes
        return
    table = specs()
    target = table[cfg.target]
    for name in cfg.aux:
        spec = table[name]
        if not spec.is_classification or spec.num_classes != target.num_classes:
            raise NtlabError(
                f"tsne draws the auxiliary tasks' images among the target's, coloured by "
                f"class; {name} is a {spec.description or 'task of another kind'}, not the "
                f"{target.num_classes} classes of {cfg.target}: pass --aux with tasks that "
                "share them, or use gcs, sweep or pairwise"
            )


def _open_run(opts: dict, command: str, cfg: TrainConfig) -> RunDir:
    return RunDir(
        opts["out"] or default_out(command, cfg.target),
        overwrite=opts["overwrite"],
        resume=opts.get("resume", False),
    )


# --- gcs ----------------------------------------------------------------------------------


def _gcs_options(
    target: opt.Target = None,
    aux: opt.Aux = "all",
    aux_kind: Annotated[
        str,
        typer.Option(
            help="task: the auxiliary domains, mixed; weight-decay: the regulariser ½‖θ‖² "
            "as the auxiliary task (Fig. 2c–d)."
        ),
    ] = GcsOptions.aux_kind,
    lams: opt.Lams = lams_text(GCS_LAMS),
    batches: Annotated[
        int | None,
        typer.Option(help=f"Sampled mini-batch pairs. {preset_help('batches')}"),
    ] = None,
    eta: Annotated[
        float, typer.Option(help="η of the one-step update θ − η(g_tgt + λ g_aux) (plain SGD).")
    ] = GcsOptions.eta,
    pretrain_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps of the target-alone training θ_T (reused from the cache when one "
            f"matches). {preset_help('pretrain_steps')}"
        ),
    ] = None,
    probe_steps: Annotated[
        int,
        typer.Option(
            help="Steps fitting the auxiliary heads on the frozen θ_T backbone before measuring "
            "(an STL model has untrained auxiliary heads)."
        ),
    ] = GcsOptions.probe_steps,
) -> None: ...


@opt.command(_gcs_options, opt.training_options, opt.run_options, exclude=("steps",))
def gcs_command(ctx: typer.Context, values: dict) -> None:
    """Gradient cosine similarity vs the transfer gain of one step (paper Fig. 2).

    Trains θ_T on the target alone, then for each sampled pair of mini-batches measures the
    cosine of the target and auxiliary gradients on the shared parameters, and for each λ
    the validation TG of one step θ_T − η(g_tgt + λ g_aux) over the step with λ = 0.
    Writes gcs.csv (batch, lam, gcs, tg, …), gcs.png and results.json.
    """
    from ntlab.analysis import gcs as gcs_analysis
    from ntlab.core.runner import trained_model
    from ntlab.metrics import effect_label, metric_units

    with guarded():
        opts, cfg, bench = _start(ctx, values)
        gopts = gcs_analysis.GcsOptions(
            lams=tuple(_lams(opts["lams"])),
            batches=opts["batches"],
            eta=opts["eta"],
            aux_kind=opts["aux_kind"],
            batch_size=cfg.batch_size,
            probe_steps=opts["probe_steps"],
            seed=cfg.seed,
        )
        gopts.check()
        aux = cfg.aux if gopts.aux_kind == "task" else []
        run = _open_run(opts, "gcs", cfg)
    with guarded(run):
        run.start("gcs", run_record(opts, cfg, bench, aux=aux, gcs=asdict(gopts)))
        with StepProgress(opts["quiet"]) as progress:
            model, data, stl, source = trained_model(
                cfg, tasks=aux, on_step=progress.callback(f"stl → {cfg.target}", cfg.steps)
            )
            gcs_analysis.fit_heads(
                model, data, aux, gopts.probe_steps, cfg.batch_size, cfg.seed, lr=10 * cfg.lr
            )
            table, image_se = gcs_analysis.gcs_table(
                model,
                data,
                cfg.target,
                aux,
                gopts,
                on_batch=progress.callback("one-step updates", gopts.batches, "batches", 1),
            )
        gcs_analysis.check_measured(table, gopts.eta)
        run.write_table("gcs.csv", table)
        summary = {**metric_fields(cfg), **gcs_analysis.gcs_summary(table, image_se)}
        results = {
            "target": cfg.target,
            "aux": aux,
            "aux_kind": gopts.aux_kind,
            "eta": gopts.eta,
            "pretrain": {"steps": cfg.steps, "val_score": stl["val_score"], "source": source},
            **summary,
        }
        complete(run, results, opts["format"])
        if opts["quiet"]:
            console.print(str(run.path))
            return
        table_out = results_table(
            f"gcs: {cfg.target} vs {gopts.aux_kind} ({summary['batches']} batches, "
            f"{summary['share_conflicting']:.0%} conflicting)",
            ["λ", "mean TG ± SE", "verdict", "share TG > 0", "corr(GCS, TG)"],
            left=("verdict",),
        )
        for lam, row in summary["per_lam"].items():
            corr = row["corr_gcs_tg"]
            table_out.add_row(
                lam,
                f"{row['mean_tg']:+.3f} ± {row['mean_tg_se']:.3f}",
                effect_label(row["effect"]),
                f"{row['share_tg_positive']:.0%}",
                "n/a" if corr is None else f"{corr:+.2f}",
            )
        console.print(table_out)
        console.print(
            f"best λ = {summary['best_lam']:g}: mean one-step TG "
            f"{summary['best_mean_tg']:+.3f} ± {summary['best_mean_tg_se']:.3f} "
            f"{metric_units(summary['metric'])} on validation "
            f"({effect_label(summary['best_effect'])}; SE over "
            f"{summary['tg_se_kind']}, {summary['batches']} batch pairs)",
            highlight=False,
            soft_wrap=True,
        )
        print_paths(run.path)


# --- csd ----------------------------------------------------------------------------------


def _csd_options(
    target: opt.Target = None,
    aux: opt.Aux = "all",
    lams: opt.Lams = lams_text(SWEEP_LAMS),
    seeds: Annotated[
        str,
        typer.Option(
            "--seeds", "--seed", help="Seeds, comma-separated; each λ is trained per seed."
        ),
    ] = "0",
    resume: opt.Resume = False,
) -> None: ...


@opt.command(
    _csd_options, opt.training_options, opt.parallel_options, opt.run_options, exclude=("seed",)
)
def csd_command(ctx: typer.Context, values: dict) -> None:
    """Confidence score discrepancy vs transfer gain over λ (paper Fig. 3b).

    For each λ (and seed) trains the target jointly with the mixed auxiliary tasks at weight
    λ (λ = 0 is STL; trainings are cached), then measures CSD = 1 − mean max-softmax
    confidence on the target test split and TG(λ) = P(θ(λ)) − P(θ(0)). Writes csd.csv,
    csd.png and results.json with the target's regime (positive, weak_negative,
    strong_negative or neutral: each λ helps or hurts only beyond its seed noise).
    """
    from ntlab.analysis import csd as csd_analysis
    from ntlab.core.runner import validate
    from ntlab.metrics import effect_label, regime_label, rule_caption

    with guarded():
        opts, cfg, bench = _start(ctx, values)
        _need_classification(cfg, "csd", "the classifier's max-softmax confidence")
        lams = _lams(opts["lams"])
        seeds = parse_seeds(opts["seeds"])
        if not any(lam > 0 for lam in lams):
            raise NtlabError("--lams needs at least one λ > 0 to compare with λ = 0")
        lams = sorted(set(lams) | {0.0})
        validate(csd_analysis.fixed_config(cfg, max(lams), seeds[0]))
        settings = opt.parallel_settings(opts)
        record = run_record(opts, cfg, bench, lams=lams, seeds=seeds)
        if opts["resume"]:
            check_resumable(opts["out"], CSD_ROWS, record, "csd")
        run = _open_run(opts, "csd", cfg)
    with guarded(run):
        rows = CheckpointRows(run, CSD_ROWS, {"lam": float, "seed": int}, opts["resume"])
        done = {(r["lam"], r["seed"]): r for r in rows.rows if r["seed"] in seeds}
        run.start("csd", record)
        if opts["resume"]:
            resume_note(len(done), len(lams) * len(seeds), opts["quiet"], "trainings")
        with StepProgress(opts["quiet"]) as progress:
            total = len(lams) * len(seeds)
            ran, overall = Parallel(), None
            if settings.parallel:  # train everything at once into the cache, then read it
                jobs = csd_analysis.grid_jobs(cfg, lams, seeds, done=done)
                ran = run_parallel(jobs, settings, progress)
            else:
                overall = progress.overall(f"csd → {cfg.target}", total, "trainings", len(done))

            def on_run(name: str, c: TrainConfig):
                if settings.parallel:
                    return None  # every training is in the cache now
                return progress.callback(f"{name} seed {c.seed} → {c.target}", c.steps)

            def on_row(row: dict) -> None:
                if ran.trained:  # the executor trained it for this command
                    own = [csd_analysis.grid_job(cfg, row["lam"], row["seed"])]
                    row["source"] = ran.source(own, row["source"])
                rows.add(row)
                if overall:
                    overall.advance()

            table = csd_analysis.csd_table(cfg, lams, seeds, on_run, done, on_row, skip=ran.broken)
        ran.raise_failed("trainings")
        run.write_table("csd.csv", table)
        summary = csd_analysis.csd_summary(table)
        results = {
            "target": cfg.target,
            "aux": cfg.aux,
            "steps": cfg.steps,
            **summary,
            "runs_resumed": len(done),
        }
        complete(run, results, opts["format"])
        if opts["quiet"]:
            console.print(str(run.path))
            return
        out = results_table(
            f"csd: {cfg.target} ← {', '.join(cfg.aux)}: "
            f"{regime_label(summary['regime'], len(seeds))} "
            f"(best λ={summary['best_lam']:g}, TG {summary['best_tg']:+.2f})",
            ["λ", "CSD", "TG (test)", "transfer"],
        )
        out.caption = rule_caption(len(seeds))
        several = len(seeds) > 1
        for lam, row in summary["per_lam"].items():
            effect = summary["effect_per_lam"].get(lam)
            out.add_row(
                lam,
                f"{row['csd_mean']:.3f}" + (f" ± {row['csd_std']:.3f}" if several else ""),
                f"{row['tg_mean']:+.2f}" + _noise(row, several, effect),
                effect_label(effect, len(seeds)) if effect else "STL",
            )
        console.print(out)
        print_paths(run.path)


def _noise(row: dict, several: bool, effect: str | None) -> str:
    """` ± 0.60`: a λ's seed std, or with one seed its TG's test-set SE (none for STL)."""
    if several:
        return f" ± {row['tg_std']:.2f}"
    return f" ± {row['tg_se']:.2f}" if effect and row.get("tg_se") is not None else ""


# --- tsne ---------------------------------------------------------------------------------


def _tsne_options(
    target: opt.Target = None,
    aux: opt.Aux = "all",
    lams: opt.Lams = lams_text(TSNE_LAMS),
    classes: Annotated[
        int | None,
        typer.Option(help="Keep the K most frequent classes [default: 10, or all if fewer]."),
    ] = None,
    max_points: Annotated[
        int, typer.Option(help="At most this many distinct points go into the t-SNE.")
    ] = 1500,
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity.")] = 30.0,
    from_run: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Use the model of this finished `train`/`forkmerge train` run "
            "[default: train the target alone (cached)].",
        ),
    ] = None,
) -> None: ...


@opt.command(_tsne_options, opt.training_options, opt.run_options)
def tsne_command(ctx: typer.Context, values: dict) -> None:
    """t-SNE of the interpolated training distribution and the target test data (Fig. 3a).

    Features of one model (trained on the target alone, or `--from` a run) for the target
    test points and, for each λ, training points drawn from (1 − Z)·target + Z·auxiliary
    with Z ~ Bernoulli(λ/(1+λ)). One embedding, one panel per λ. Writes tsne.csv, tsne.png
    and results.json.
    """
    from ntlab.analysis import tsne as tsne_analysis
    from ntlab.core.runner import load_model, stl_config, trained_model

    with guarded():
        opts, cfg, bench = _start(ctx, values)
        _need_classification(cfg, "tsne", "one feature vector per image, coloured by its class")
        _need_same_classes(bench, cfg)
        lams = _lams(opts["lams"])
        tsne_analysis.check_tsne_options(opts["max_points"], opts["perplexity"])
        num_classes = bench.load([cfg.target])[cfg.target].num_classes
        if opts["classes"] is None:
            opts["classes"] = min(10, num_classes)
        if not 0 < opts["classes"] <= num_classes:
            raise NtlabError(
                f"--classes must be between 1 and {num_classes} (the label set of "
                f"{cfg.target}), got {opts['classes']}"
            )
        if opts["from_run"] is not None:
            load_model(opts["from_run"], device=cfg.device)  # checks it before any work
        run = _open_run(opts, "tsne", cfg)
    with guarded(run):
        source = str(opts["from_run"]) if opts["from_run"] else "stl"
        run.start("tsne", run_record(opts, cfg, bench, lams=lams, model=source))
        with StepProgress(opts["quiet"]) as progress:
            if opts["from_run"] is not None:
                model, data, model_cfg = load_model(
                    opts["from_run"], tasks=[cfg.target, *cfg.aux], device=cfg.device
                )
                if cfg.target not in model.task_names:
                    raise NtlabError(
                        f"the model of {opts['from_run']} has no head for {cfg.target}; "
                        f"its tasks are {', '.join(model.task_names)}"
                    )
            else:
                model_cfg = stl_config(cfg)
                model, data, _, _ = trained_model(
                    model_cfg,
                    tasks=cfg.aux,
                    on_step=progress.callback(f"stl → {cfg.target}", cfg.steps),
                )
        status = console.status("t-SNE …") if not opts["quiet"] else None
        if status:
            status.start()
        try:
            table = tsne_analysis.tsne_table(
                model,
                data,
                cfg.target,
                cfg.aux,
                lams,
                classes=opts["classes"],
                max_points=opts["max_points"],
                seed=cfg.seed,
                perplexity=opts["perplexity"],
            )
        finally:
            if status:
                status.stop()
        run.write_table("tsne.csv", table)
        results = {
            "target": cfg.target,
            "aux": cfg.aux,
            "model": source,
            "model_train": asdict(model_cfg),
            **tsne_analysis.tsne_summary(table),
        }
        complete(run, results, opts["format"])
        if opts["quiet"]:
            console.print(str(run.path))
            return
        out = results_table(
            f"tsne: {cfg.target} ← {', '.join(cfg.aux)}",
            ["λ", "target-train", "aux-train", "target-test", "aux share (expected)"],
        )
        for lam, row in results["per_lam"].items():
            p = row["points"]
            out.add_row(
                lam,
                str(p["target-train"]),
                str(p["aux-train"]),
                str(p["target-test"]),
                f"{row['aux_share']:.2f} ({row['expected_aux_share']:.2f})",
            )
        console.print(out)
        print_paths(run.path)
