"""`ntlab affinity`'s measurements and scoring: the lookahead formula by hand on a tiny linear
model, the scoring against scipy, and the training it rides on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from ntlab.analysis import affinity as af
from ntlab.data.benchmark import TaskData
from ntlab.models.multitask import MultiTaskModel
from ntlab.tasks import TaskSpec


def _regression(weights: list[float]) -> TaskSpec:
    def head(_features, _shape):
        layer = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([weights]))
        return layer

    return TaskSpec(
        kind="custom", head=head, loss=F.mse_loss, metrics={"mse": False}, primary="mse"
    )


def _tiny():
    torch.manual_seed(0)
    backbone = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        backbone.weight.copy_(torch.tensor([[1.0, 0.5], [-0.5, 2.0]]))
    specs = {"a": _regression([1.0, -1.0]), "b": _regression([0.5, 2.0])}
    model = MultiTaskModel(backbone, specs)
    g = torch.Generator().manual_seed(1)
    data = {}
    for name in specs:
        x = torch.randn(4, 2, generator=g)
        y = torch.randn(4, 1, generator=g)
        xv = torch.randn(5, 2, generator=g)
        yv = torch.randn(5, 1, generator=g)
        splits = {"train": (x, y), "val": (xv, yv), "test": (xv, yv)}
        data[name] = TaskData(name, None, splits, specs[name])
    return model, data


def _by_hand(model, data, i: str, j: str, eta: float, scale=1.0) -> tuple[float, float]:
    """Z_{i→j} and cos(g_i, g_j) with numpy: L = mean((h W x − y)²), ∂L/∂W = 2/N Σ r hᵀ xᵀ;
    the step η·g·scale (scale: a preconditioner, entry by entry)."""
    w = model.backbone.weight.detach().double().numpy()
    heads = {t: model.heads[model.head_index(t)].weight.detach().double().numpy()[0] for t in data}

    def grad(t):
        x, y = (a.double().numpy() for a in data[t].splits["train"])
        r = x @ w.T @ heads[t] - y[:, 0]
        return 2 / len(r) * np.outer(heads[t], (r[:, None] * x).sum(0))

    def val_loss(t, weight):
        x, y = (a.double().numpy() for a in data[t].splits["val"])
        return float(np.mean((x @ weight.T @ heads[t] - y[:, 0]) ** 2))

    z = 1 - val_loss(j, w - eta * grad(i) * scale) / val_loss(j, w)
    gi, gj = grad(i).ravel(), grad(j).ravel()
    return z, float(gi @ gj / np.linalg.norm(gi) / np.linalg.norm(gj))


def test_the_lookahead_and_the_cosine_match_a_hand_computation():
    model, data = _tiny()
    m = af.Measurer(model, data, ["a", "b"], batch_size=4, held_out=100, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = pd.DataFrame(m.measure(model, step=7, eta=0.1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert set(rows["step"]) == {7} and len(rows) == 2 * len(af.PREDICTORS)
    for target, aux in (("b", "a"), ("a", "b")):
        want_z, want_cos = _by_hand(model, data, aux, target, 0.1)
        got = rows[(rows["target"] == target) & (rows["aux"] == aux)].set_index("predictor")
        assert got.loc["lookahead", "value"] == pytest.approx(want_z, rel=1e-4, abs=1e-6)
        assert got.loc["cosine", "value"] == pytest.approx(want_cos, rel=1e-5)
        # without a preconditioner the optimiser's lookahead is the plain one
        assert got.loc["lookahead-adam", "value"] == got.loc["lookahead", "value"]
    scale = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    rows = pd.DataFrame(m.measure(model, step=7, eta=0.1, precondition=[scale]))
    got = rows[(rows["target"] == "b") & (rows["aux"] == "a")].set_index("predictor")
    want_z, _ = _by_hand(model, data, "a", "b", 0.1, scale.double().numpy())
    assert got.loc["lookahead-adam", "value"] == pytest.approx(want_z, rel=1e-4, abs=1e-6)
    assert af.lookahead_affinity(2.0, 1.5) == pytest.approx(0.25)
    assert af.lookahead_affinity(0.0, 1.0) == 0.0


def test_the_shift_is_zero_for_shared_inputs_and_grows_with_the_gap():
    a = torch.zeros(50, 3)
    a[:, 0] = torch.linspace(-1, 1, 50)
    assert af._shift(a, a.clone()) == 0.0
    near, far = a.clone(), a.clone()
    near[:, 1] += 0.1
    far[:, 1] += 1.0
    assert af._shift(a, far) < af._shift(a, near) < 0
    assert af._shift(a, far) == pytest.approx(-1.0 / float(a.var(0).sum()), rel=1e-6)


def _table() -> pd.DataFrame:
    """A fixed 4-task map: measured TG on 3 seeds, and two predictors."""
    tasks = ["w", "x", "y", "z"]
    rng = np.random.default_rng(0)
    rows, preds = [], []
    for t in tasks:
        for a in tasks:
            if a == t:
                continue
            truth = rng.normal()
            for seed in range(3):
                rows.append({"target": t, "aux": a, "method": "ew", "seed": seed,
                             "tg": truth + 0.3 * rng.normal()})  # fmt: skip
            for step in (10, 20):
                preds.append({"step": step, "target": t, "aux": a, "predictor": "good",
                              "value": truth + 0.1 * rng.normal()})  # fmt: skip
                preds.append({"step": step, "target": t, "aux": a, "predictor": "bad",
                              "value": rng.normal()})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(preds)


def test_the_scores_match_scipy_on_a_fixed_table():
    pairwise, table = _table()
    cells = af.measured_cells(pairwise)
    assert len(cells) == 12 and {"tg_0", "tg_1", "tg_2"} <= set(cells.columns)
    scores = af.score_predictors(table, cells)
    for predictor in ("good", "bad"):
        mean = table[table["predictor"] == predictor].groupby(["target", "aux"])["value"].mean()
        pred = [mean[(t, a)] for t, a in zip(cells["target"], cells["aux"])]
        want = spearmanr(pred, cells["tg"]).statistic
        assert scores[predictor]["spearman"] == pytest.approx(want)
        for target, row in cells.assign(pred=pred).groupby("target"):
            got = scores[predictor]["targets"][target]
            assert got["spearman"] == pytest.approx(spearmanr(row["pred"], row["tg"]).statistic)
            first = row.loc[row["pred"].idxmax()]
            assert got["first"] == first["aux"] and got["first_tg"] == pytest.approx(first["tg"])
            assert got["regret"] == pytest.approx(row["tg"].max() - first["tg"])
        assert scores[predictor]["sign_share"] is None  # not a signed predictor
    assert scores["good"]["spearman"] > 0.8 > scores["bad"]["spearman"]
    assert af.best_predictor(scores) == "good"
    pairs = [spearmanr(cells[f"tg_{a}"], cells[f"tg_{b}"]).statistic for a, b in
             ((0, 1), (0, 2), (1, 2))]  # fmt: skip
    assert af.seed_ceiling(cells) == pytest.approx(np.mean(pairs))
    chosen = af.select_auxiliary(table, "good", 2)
    assert set(chosen) == {"w", "x", "y", "z"} and all(len(v) == 2 for v in chosen.values())
    matrix = af.affinity_matrix(table, "good")
    assert chosen["w"] == list(matrix.loc["w"].drop("w").sort_values(ascending=False).index[:2])


def test_a_signed_predictor_scores_the_share_of_signs_it_gets_right():
    cells = pd.DataFrame({"target": ["a", "a", "b", "b"], "aux": ["b", "c", "a", "c"],
                          "tg": [1.0, -2.0, 0.5, -0.1]})  # fmt: skip
    table = pd.DataFrame({"step": 1, "target": cells["target"], "aux": cells["aux"],
                          "predictor": "cosine", "value": [0.3, -0.1, -0.2, -0.4]})  # fmt: skip
    assert af.score_predictors(table, cells)["cosine"]["sign_share"] == 0.75


def _cosine_and_shift() -> pd.DataFrame:
    """Two measurements of three tasks: the cosine (symmetric) and the shift, by cell."""
    cosine = {("a", "b"): (0.1, 0.3), ("a", "c"): (0.0, 0.2), ("b", "c"): (0.5, 0.3)}
    shift = {("a", "b"): -0.1, ("a", "c"): -0.3, ("b", "a"): -0.1, ("b", "c"): -0.2,
             ("c", "a"): -0.3, ("c", "b"): -0.2}  # fmt: skip
    rows = []
    for k, step in enumerate((5, 10)):
        for (t, a), values in cosine.items():
            for target, aux in ((t, a), (a, t)):
                rows.append({"step": step, "target": target, "aux": aux, "predictor": "cosine",
                             "value": values[k]})  # fmt: skip
        for (t, a), value in shift.items():
            rows.append({"step": step, "target": t, "aux": a, "predictor": "shift",
                         "value": value + 0.01 * k})  # fmt: skip
    return pd.DataFrame(rows, columns=af.COLUMNS)


def test_the_two_level_predictor_matches_a_hand_computation():
    table = _cosine_and_shift()
    assert af.predictors_of(table) == ["cosine", "shift", "two-level"]
    assert af.predictors_of(table[table["predictor"] == "cosine"]) == ["cosine"]
    got = af.affinity_matrix(table, "two-level")
    # mean cosines 0.2 (a, b), 0.1 (a, c), 0.4 (b, c): the targets' row means 0.15, 0.3,
    # 0.25, standardised over the targets (population std); the shift within each row of
    # two cells standardises to ±1 (the closer inputs +1)
    means = np.array([0.15, 0.3, 0.25])
    target = dict(zip("abc", (means - means.mean()) / means.std()))
    within = {("a", "b"): 1, ("a", "c"): -1, ("b", "a"): 1, ("b", "c"): -1,
              ("c", "a"): -1, ("c", "b"): 1}  # fmt: skip
    for (t, a), w in within.items():
        assert got.loc[t, a] == pytest.approx(target[t] + w)
    assert got.loc["a", "c"] == pytest.approx(-2.3363, abs=1e-4)  # −1.3363 − 1
    assert got.isna().to_numpy().sum() == 3  # the diagonal
    # the measured predictors are read as before
    cos = af.affinity_matrix(table, "cosine")
    assert cos.loc["a", "b"] == pytest.approx(0.2) and cos.loc["b", "a"] == pytest.approx(0.2)
    # no shift (tasks sharing their inputs): only the targets are ordered
    flat = table.assign(value=table["value"].where(table["predictor"] == "cosine", 0.0))
    rows = af.affinity_matrix(flat, "two-level")
    for t in "abc":
        assert rows.loc[t].dropna().to_numpy() == pytest.approx([target[t], target[t]])
    # scored like any predictor, with no sign share (its 0 means nothing)
    cells = pd.DataFrame({"target": ["a", "a", "b", "b", "c", "c"],
                          "aux": ["b", "c", "a", "c", "a", "b"],
                          "tg": [-1.0, -2.0, 2.0, 0.5, -1.5, 1.0]})  # fmt: skip
    scores = af.score_predictors(table, cells)
    assert set(scores) == {"cosine", "shift", "two-level"}
    assert scores["two-level"]["sign_share"] is None
    assert scores["two-level"]["spearman"] == pytest.approx(1.0)


def test_run_affinity_trains_ew_and_measures_every_pair(tiny_digits):
    from ntlab.core.runner import TrainConfig, run_training

    cfg = TrainConfig(target="optdigits", steps=12, batch_size=16, device="cpu")
    tasks = ["optdigits", "mnist", "syn"]
    out = af.run_affinity(cfg, tasks, af.AffinityOptions(every=4, held_out=32))
    assert sorted(out.table["step"].unique()) == [4, 8, 12]
    assert len(out.table) == 3 * 6 * len(af.PREDICTORS)
    assert np.isfinite(out.table["value"]).all()
    assert out.results["measurements"] == 3 and out.results["held_out"]["syn"] == 32
    # the measurement leaves the training alone: the trained model is `train --method ew`'s
    ew = run_training(af.affinity_config(cfg, tasks))
    for t in tasks:
        assert out.results["scores"][t]["test"] == ew.results["tasks"][t]["test_score"]
    # η is the rate of the step just taken: the last measurement of a cosine run still moves
    last = out.table[(out.table["step"] == 12) & (out.table["predictor"] == "lookahead")]
    assert (last["value"] != 0).all()
    # Adam's step scale, read from the optimiser's moments: 1/(√v̂ + ε) per entry
    values = {p: out.table[out.table["predictor"] == p]["value"].to_numpy() for p in af.PREDICTORS}
    assert (abs(values["lookahead-adam"]) > abs(values["lookahead"])).mean() > 0.9
    lookahead = af.affinity_matrix(out.table, "lookahead")
    assert list(lookahead.index) == tasks and lookahead.isna().to_numpy().sum() == 3  # diagonal
