"""MTReclib's AliExpress CSV format: reading, checking, the time split and the encoding.

Layout
------
``ROOT/AliExpress_<CC>/{train,test}.csv`` for CC in NL, ES, FR, US (MTReclib's
`data/AliExpress_NL/train.csv`, …; the AliExpress data set of Alibaba's Tianchi, as
github.com/easezyc/Multitask-Recommendation-Library links it). Each file has a header row
and exactly these columns (others are ignored): ``search_id``, ``categorical_1`` …
``categorical_16`` (integers), ``numerical_1`` … ``numerical_63`` (finite numbers),
``click`` and ``conversion`` (0 or 1, a conversion only with a click).

Splits
------
As in the ForkMerge paper, each country's rows are re-split by time 90/5/5: its rows in
file order, train.csv then test.csv, are its time order; the first n − 2·round(n/20) rows
train, the next round(n/20) validate, the last round(n/20) test.

Encoding
--------
One vocabulary per categorical field over every country's *training* rows (shared across
countries, so that the countries share their embeddings: what makes cross-market transfer
possible): the values seen there get indices 1…V in sorted order, every other value
(seen only in val or test) the reserved index 0; the field's vocabulary size is V + 1.
The numericals are standardised with the mean and standard deviation of every country's
training rows (a constant column: divided by 1). A country's rows become one float32
tensor [n, 16 + 63] (the indices, exact as floats, then the standardised numericals) and
targets [n, 2] float32 (click, conversion).

Checks
------
Every problem ends the command with one line (NtlabError, exit 2) naming ``file:line``
(the header is line 1): a missing file, a missing column, a row with too many fields, a
categorical value that is not an integer, a numerical value that is not finite (empty,
NaN, inf, text), a label outside {0, 1}, a conversion without a click. `load_market_tree`
also refuses, for the countries asked for, a val or test split in which one of the test
folds (`ntlab.tasks.FOLDS` disjoint parts, where TG's noise is measured) lacks a positive
or a negative of a task's label: an AUC there would be undefined.

Cache
-----
Parsing is the slow part (pandas with explicit dtypes; real AliExpress has millions of
rows a country). The encoded tensors are kept in NTLAB_HOME/datasets/parsed/ under a key
of the loader's version and source, the root's path and each file's size and mtime (ns):
changed files (or a changed loader) are parsed (and checked) again; only the latest parse of
a root is kept.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ntlab.errors import NtlabError
from ntlab.paths import datasets_dir

ENV = "NTLAB_ALIEXPRESS"
COUNTRIES = ("NL", "ES", "FR", "US")
FILES = ("train.csv", "test.csv")
CATEGORICAL = tuple(f"categorical_{i}" for i in range(1, 17))
NUMERICAL = tuple(f"numerical_{i}" for i in range(1, 64))
LABELS = ("click", "conversion")
COLUMNS = ("search_id", *CATEGORICAL, *NUMERICAL, *LABELS)
SPLITS = ("train", "val", "test")
SHARE = 20  # val and test get round(n / SHARE) rows each: 90/5/5
MIN_ROWS = 10  # the fewest rows a country can have: round(10/20) = 1 each to val and test
LOADER_VERSION = 1  # part of the cache key and the benchmarks' fingerprints
MAX_INDEX = 2**24  # float32 holds every integer up to here exactly
WHERE = (
    "expected ROOT/AliExpress_{NL,ES,FR,US}/{train,test}.csv in MTReclib's format (the "
    "AliExpress data set linked from github.com/easezyc/Multitask-Recommendation-Library)"
)


def folder(root: Path, country: str) -> Path:
    return Path(root) / f"AliExpress_{country}"


def split_sizes(n: int) -> dict[str, int]:
    """Rows per split of a country with n rows: 90/5/5, val and test round(n/20) each."""
    part = (2 * n + SHARE) // (2 * SHARE)  # round half up
    sizes = {"train": n - 2 * part, "val": part, "test": part}
    if min(sizes.values()) < 1:
        raise NtlabError(f"{n} rows cannot be split 90/5/5 (each split needs a row)")
    return sizes


# --- reading one file ----------------------------------------------------------------------


def _fail(path: Path, line: int | None, what: str) -> NtlabError:
    return NtlabError(f"{path}{f':{line}' if line else ''}: {what}")


def _header(path: Path) -> list[str]:
    import pandas as pd

    if not path.is_file():
        raise _fail(path, None, f"missing; {WHERE}")
    try:
        columns = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise _fail(path, 1, "no header row of column names") from None
    names = {c.strip() for c in columns}
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _fail(path, 1, f"no column {missing[0]!r}{more}; {WHERE}")
    return columns


def _first_bad(path: Path) -> NtlabError:
    """The earliest bad value of a file the typed parse refused, read again as text."""
    import pandas as pd

    wanted = set(COLUMNS[1:])
    text = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=False,
        usecols=lambda c: str(c).strip() in wanted,
    )
    text.columns = [str(c).strip() for c in text.columns]
    found: list[tuple[int, int, str]] = []  # (row, column order, message)
    for order, col in enumerate(COLUMNS[1:]):
        values = text[col].str.strip()
        if col in CATEGORICAL:
            integer = values.str.fullmatch(r"[+-]?\d+(\.0*)?")
            number = pd.to_numeric(values.where(integer, "0"), errors="coerce").to_numpy(float)
            big = ~(np.abs(number) < 2.0**63)  # what int64 cannot hold
            bad = ~integer | big
            why = "not an integer" if not big.any() else "not an integer within ±2⁶³"
        else:
            number = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(number)
            if col in LABELS:
                bad |= ~np.isin(number, (0.0, 1.0))
            why = "not 0 or 1" if col in LABELS else "not a finite number"
        rows = np.flatnonzero(np.asarray(bad))
        if len(rows):
            value = values.iloc[rows[0]]
            shown = repr(value) if value else "empty"
            found.append((int(rows[0]), order, f"{col} is {shown}, {why}"))
    if not found:  # pragma: no cover - the typed parse failed for a reason not seen here
        return _fail(path, None, "cannot be read as MTReclib's AliExpress format")
    row, _, what = min(found)
    return _fail(path, row + 2, what)


def read_market_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(categorical int64 [n, 16], numerical float64 [n, 63], labels int8 [n, 2]) of one
    CSV file, checked (see the module docstring)."""
    import pandas as pd  # here: registering the benchmarks must not import it

    path = Path(path)
    columns = _header(path)
    dtypes = {c: "int64" for c in CATEGORICAL} | {c: "float64" for c in (*NUMERICAL, *LABELS)}
    named = {c: dtypes[c.strip()] for c in columns if c.strip() in dtypes}
    try:
        with warnings.catch_warnings():  # a first row longer than the header: an error
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path, dtype=named, index_col=False, skip_blank_lines=False, engine="c"
            )
    except pd.errors.ParserWarning:
        raise _fail(path, 2, f"more fields than the header's {len(columns)}") from None
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            want, line, saw = match.groups()
            raise _fail(path, int(line), f"{saw} fields, the header has {want}") from None
        raise _fail(path, None, f"cannot be parsed ({str(exc).strip()[:120]})") from None
    except (ValueError, OverflowError):
        raise _first_bad(path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    cat = frame[list(CATEGORICAL)].to_numpy(np.int64)
    num = frame[list(NUMERICAL)].to_numpy(np.float64)
    labels = frame[list(LABELS)].to_numpy(np.float64)
    if not (np.isfinite(num).all() and np.isin(labels, (0.0, 1.0)).all()):
        raise _first_bad(path)  # read again as text, to quote the value as written
    bad = (labels[:, 1] > labels[:, 0]).nonzero()[0]
    if len(bad):
        raise _fail(path, bad[0] + 2, "a conversion without a click (conversion 1, click 0)")
    return cat, num, labels.astype(np.int8)


# --- a whole tree --------------------------------------------------------------------------


@dataclass
class MarketData:
    """Every country's encoded splits: `x[cc][split]` float32 [n, 79], `y[cc][split]`
    float32 [n, 2] (click, conversion), and the vocabulary size per categorical field."""

    x: dict[str, dict[str, torch.Tensor]]
    y: dict[str, dict[str, torch.Tensor]]
    vocab: list[int]

    def inputs(self) -> dict:
        return {"categorical": list(self.vocab), "numerical": len(NUMERICAL)}


def tree_files(root: Path) -> list[Path]:
    return [folder(root, cc) / name for cc in COUNTRIES for name in FILES]


def files_fingerprint(root: Path) -> str:
    """SHA-256 of each file's relative path, size and mtime (ns); a missing file fails."""
    h = hashlib.sha256(f"loader {LOADER_VERSION}".encode())
    for path in tree_files(root):
        if not path.is_file():
            raise _fail(path, None, f"missing; {WHERE}")
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def encode(parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> MarketData:
    """Split each country's rows 90/5/5 in order, build the vocabularies and the
    numericals' statistics on the training rows of all countries, and encode."""
    sizes = {cc: split_sizes(len(parts[cc][0])) for cc in parts}
    train_cat = np.concatenate([parts[cc][0][: sizes[cc]["train"]] for cc in parts])
    train_num = np.concatenate([parts[cc][1][: sizes[cc]["train"]] for cc in parts])
    seen = [np.unique(train_cat[:, f]) for f in range(train_cat.shape[1])]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
        mean = train_num.mean(0)
        std = train_num.std(0)
    _check_scale(~(np.isfinite(mean) & np.isfinite(std)), "its training values' mean or spread")
    std[~(std > 1e-12)] = 1.0
    x, y = {}, {}
    for cc, (cat, num, labels) in parts.items():
        index = np.empty(cat.shape, np.float32)
        for f, values in enumerate(seen):
            pos = np.searchsorted(values, cat[:, f]).clip(max=len(values) - 1)
            index[:, f] = np.where(values[pos] == cat[:, f], pos + 1, 0)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = ((num - mean) / std).astype(np.float32)
        _check_scale(~np.isfinite(scaled).all(0), f"a standardised value in {cc}")
        rows = np.concatenate([index, scaled], 1)
        bounds = np.cumsum([0] + [sizes[cc][s] for s in SPLITS])
        target = labels.astype(np.float32)
        cuts = list(zip(SPLITS, bounds, bounds[1:]))
        x[cc] = {s: torch.from_numpy(rows[a:b].copy()) for s, a, b in cuts}
        y[cc] = {s: torch.from_numpy(target[a:b].copy()) for s, a, b in cuts}
    vocab = [len(values) + 1 for values in seen]
    if max(vocab) > MAX_INDEX:
        raise NtlabError(f"a categorical field has {max(vocab)} values, more than {MAX_INDEX}")
    return MarketData(x, y, vocab)


def _check_scale(bad: np.ndarray, what: str) -> None:
    """Numerical values so large that standardising them overflows are bad input."""
    if bad.any():
        column = NUMERICAL[int(np.flatnonzero(bad)[0])]
        raise NtlabError(
            f"{column}: {what} is not a finite float (its values are too large to "
            "standardise); rescale that column in the CSV files"
        )


def _code_digest() -> str:
    """This loader's source: a parse cached by other code is parsed again."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def _cache_path(root: Path, key: str) -> Path:
    where = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return datasets_dir() / "parsed" / f"aliexpress-{where}-{key}.pt"


def _load_cached(path: Path) -> MarketData | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return MarketData(blob["x"], blob["y"], [int(v) for v in blob["vocab"]])
    except Exception:  # noqa: BLE001 - a damaged cache is parsed again
        return None


def _save_cache(path: Path, data: MarketData) -> None:
    from ntlab.storage import save_torch_file

    try:
        save_torch_file({"x": data.x, "y": data.y, "vocab": data.vocab}, path)
    except NtlabError:
        return  # a cache that cannot be written is only slower next time
    for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


def load_market_tree(root: Path, cache: bool = True) -> MarketData:
    """Every country of the tree at `root`, read, checked and encoded (cached)."""
    root = Path(root)
    key = files_fingerprint(root)
    code = hashlib.sha256(f"{key}:{_code_digest()}".encode()).hexdigest()[:20]
    path = _cache_path(root, code)
    data = _load_cached(path) if cache else None
    if data is not None:
        return data
    parts = {}
    for cc in COUNTRIES:
        read = [read_market_file(folder(root, cc) / name) for name in FILES]
        parts[cc] = tuple(np.concatenate(arrays) for arrays in zip(*read))
        n = len(parts[cc][0])
        if n < MIN_ROWS:
            raise NtlabError(
                f"{folder(root, cc)}: {n} rows in train.csv and test.csv together, too few to "
                f"split 90/5/5 (at least {MIN_ROWS})"
            )
    data = encode(parts)
    if cache:
        _save_cache(path, data)
    return data


def check_folds(root: Path, data: MarketData, country: str, labels: tuple[str, ...]) -> None:
    """Refuse a val or test split of `country` one of whose folds lacks a positive or a
    negative of one of `labels` (click, conversion): its AUC would be undefined."""
    from ntlab.tasks import FOLDS, fold_ids

    for split in ("val", "test"):
        y = data.y[country][split]
        n = len(y)
        folds = min(FOLDS, n) if n >= 2 else 1
        ids = fold_ids(n, folds=folds) if folds > 1 else torch.zeros(n, dtype=torch.long)
        size = torch.bincount(ids, minlength=folds)
        for label in labels:
            pos = torch.bincount(ids, weights=y[:, LABELS.index(label)], minlength=folds)
            lacking = ((pos == 0) | (pos == size)).nonzero().flatten()
            if len(lacking):
                kind = "positive" if pos[lacking[0]] == 0 else "negative"
                raise NtlabError(
                    f"{folder(root, country)}: the {split} split ({n} rows, "
                    f"{'the 5% before the last' if split == 'val' else 'the last 5%'}) has "
                    f"{int((y[:, LABELS.index(label)] > 0).sum())} {label}s and a fold of "
                    f"{folds} without a {kind} one: its {label} AUC cannot be measured "
                    f"(every fold of the {split} split needs both classes; more rows are needed)"
                )


def content_fingerprint(root: Path) -> str:
    """SHA-256 of the tree's files' relative paths and bytes (a generated tree's manifest)."""
    h = hashlib.sha256(f"loader {LOADER_VERSION}".encode())
    for path in tree_files(root):
        h.update(f"{path.relative_to(root)}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
