"""t-SNE of the interpolated training distribution (paper Fig. 3a, Eq. 3).

Features of one model for the target test points and, for each λ, training points drawn
from T_inter = (1 − Z)·T_tgt + Z·T_aux, Z ~ Bernoulli(λ/(1+λ)). The panels share one
embedding: every distinct point is embedded once, so panels are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.manifold import TSNE

from ntlab.checks import check_number
from ntlab.config import TSNE_LAMS as DEFAULT_LAMS  # noqa: F401  (re-exported)
from ntlab.data.benchmark import TaskData
from ntlab.data.files import Images, cat_images, labelled_chunks
from ntlab.data.sampler import interpolated_draw, seeded_generator
from ntlab.errors import NtlabError
from ntlab.models.multitask import MultiTaskModel

SOURCES = ("target-train", "aux-train", "target-test")


def top_classes(labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """The k most frequent labels (ties to the smaller label), sorted."""
    if not 0 < k <= num_classes:
        raise NtlabError(f"--classes must be between 1 and {num_classes} (the label set), got {k}")
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    order = sorted(range(num_classes), key=lambda c: (-int(counts[c]), c))
    return torch.tensor(sorted(order[:k]))


def check_tsne_options(max_points: int, perplexity: float) -> None:
    """At least 30 points, and 0 < perplexity < --max-points (scikit-learn's rule: fewer
    than the points embedded). Above (points − 1)/3 every point is a neighbour of every
    other, so the perplexity used is at most that."""
    check_number("--max-points", max_points, low=30, integer=True)
    check_number(
        "--perplexity",
        perplexity,
        low=0,
        high=max_points,
        low_open=True,
        high_open=True,
        why="it must be below --max-points, the points t-SNE embeds",
    )


def _pool(
    x: Images, y: torch.Tensor, keep: torch.Tensor, gen: torch.Generator, domain: torch.Tensor
):
    """The points of the kept classes, shuffled: images, labels and each point's domain."""
    mask = torch.isin(y.cpu(), keep)
    idx = torch.nonzero(mask).flatten()
    idx = idx[torch.randperm(len(idx), generator=gen)]
    return x[idx.to(x.device)], y[idx.to(y.device)], domain[idx]


@torch.no_grad()
def features_of(
    model: MultiTaskModel, x: Images, y: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    parts, kept = [], 0
    for images, labels in labelled_chunks(x, y, chunk):
        parts.append(model.features(images))
        kept += len(labels)
    model.train(was_training)
    if kept != len(y):
        raise NtlabError(
            f"{len(y) - kept} images of a t-SNE pool could not be read; t-SNE needs them all"
        )
    return torch.cat(parts).float().cpu()


def tsne_table(
    model: MultiTaskModel,
    data: dict[str, TaskData],
    target: str,
    aux: list[str],
    lams: Sequence[float],
    *,
    classes: int = 10,
    max_points: int = 1500,
    seed: int = 0,
    perplexity: float = 30.0,
) -> pd.DataFrame:
    """One row per point shown in a panel: lam, x, y, source, label, domain (the target's
    name, or the auxiliary domain the point comes from)."""
    check_number("--max-points", max_points, low=30, integer=True)
    check_number("--perplexity", perplexity, low=0, low_open=True)
    tgt = data[target]
    num_classes = tgt.num_classes
    keep = top_classes(torch.cat([tgt.y("train"), tgt.y("test")]), classes, num_classes)
    gen = seeded_generator(seed, "tsne")
    aux_labels = [data[a].y("train") for a in aux]
    aux_domain = torch.cat([torch.full((len(y),), i) for i, y in enumerate(aux_labels)])
    names = {"target-test": [target], "target-train": [target], "aux-train": list(aux)}
    pools = {
        "target-test": _pool(
            tgt.x("test"),
            tgt.y("test"),
            keep,
            gen,
            torch.zeros(len(tgt.y("test")), dtype=torch.long),
        ),
        "target-train": _pool(
            tgt.x("train"),
            tgt.y("train"),
            keep,
            gen,
            torch.zeros(len(tgt.y("train")), dtype=torch.long),
        ),
        "aux-train": _pool(
            cat_images([data[a].x("train") for a in aux]),
            torch.cat(aux_labels),
            keep,
            gen,
            aux_domain,
        ),
    }
    per_part = max_points // 3  # test points + draws per panel + the extra auxiliary points
    n_test = min(per_part, len(pools["target-test"][1]))
    pool_size = {s: len(pools[s][1]) for s in SOURCES}
    draws = []
    for lam in lams:
        # As many draws as the pools allow without repeating a point, at most per_part.
        share = lam / (1 + lam)
        n = per_part
        if share < 1:
            n = min(n, int(pool_size["target-train"] / (1 - share)))
        if share > 0:
            n = min(n, int(pool_size["aux-train"] / share))
        is_aux, rank = interpolated_draw(n, lam, gen)
        src_size = torch.where(is_aux, pool_size["aux-train"], pool_size["target-train"])
        fits = rank < src_size  # the rare draw past the end of a pool is dropped
        draws.append((lam, is_aux[fits], rank[fits]))
    sizes = {
        "target-test": n_test,
        "target-train": max(int((~a).sum()) for _, a, _ in draws),
        "aux-train": max(int(a.sum()) for _, a, _ in draws),
    }
    xs = cat_images([pools[s][0][: sizes[s]] for s in SOURCES if sizes[s]])
    ys = torch.cat([pools[s][1][: sizes[s]] for s in SOURCES if sizes[s]])
    offsets = dict(zip(SOURCES, np.cumsum([0] + [sizes[s] for s in SOURCES])[:-1]))
    feats = features_of(model, xs, ys).numpy()
    embedding = TSNE(
        n_components=2,
        init="pca",
        perplexity=min(perplexity, (len(feats) - 1) / 3),
        random_state=seed,
    ).fit_transform(feats)

    frames = []
    for lam, is_aux, rank in draws:
        parts = [("target-test", torch.arange(n_test))]
        parts.append(("target-train", rank[~is_aux]))
        parts.append(("aux-train", rank[is_aux]))
        for source, ranks in parts:
            if not len(ranks) or not sizes[source]:
                continue
            local = ranks.numpy()
            rows = offsets[source] + local
            frames.append(
                pd.DataFrame(
                    {
                        "lam": lam,
                        "x": embedding[rows, 0],
                        "y": embedding[rows, 1],
                        "source": source,
                        "label": pools[source][1][: sizes[source]].cpu().numpy()[local],
                        "domain": np.asarray(names[source])[
                            pools[source][2][: sizes[source]].numpy()[local]
                        ],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def tsne_summary(table: pd.DataFrame) -> dict:
    """Per λ: how many points of each source, and the auxiliary share of training points."""
    per_lam = {}
    for lam, group in table.groupby("lam"):
        counts = group["source"].value_counts().to_dict()
        train = counts.get("target-train", 0) + counts.get("aux-train", 0)
        per_lam[f"{lam:g}"] = {
            "points": {s: int(counts.get(s, 0)) for s in SOURCES},
            "aux_share": counts.get("aux-train", 0) / train if train else 0.0,
            "expected_aux_share": lam / (1 + lam),
        }
    return {"per_lam": per_lam, "classes": sorted(int(c) for c in table["label"].unique())}
