"""Recommendation tasks: click-through (CTR) and click-through-and-conversion (CTCVR) as
ESMM models them (Ma et al., SIGIR 2018), for the multi-market benchmarks
(`ntlab.data.markets`: `aliexpress`, `markets`).

Both tasks take targets [N, 2] float32: (click, conversion) of each impression.

- `ctr_task`: one logit l; loss BCE-with-logits(l, click); metrics `auc` (primary, of
  σ(l) against click) and `logloss`.
- `ctcvr_task`: a whole ESMM: the head outputs two logits (l_ctr, l_cvr), with
  pCTR = σ(l_ctr), pCVR = σ(l_cvr) and pCTCVR = pCTR · pCVR; loss
  BCE(pCTR, click) + BCE(pCTCVR, conversion), both in log space (`log_ctcvr`); metrics
  `auc` (primary, of pCTCVR against conversion), `logloss` (of pCTCVR against conversion)
  and `ctr_auc` (of pCTR against click; a diagnostic, outside Δm). Trained alone, the
  target is single-country ESMM.

AUCs are in points (100 · AUC, scikit-learn's `roc_auc_score`: ties count one half). An
AUC needs both classes: where a set of samples has only one, `auc_points` fails with
NtlabError rather than return NaN (the benchmarks refuse, at load time, a val or test
split any of whose FOLDS folds lacks a class, so only a very small `--val-samples` can
reach it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ntlab.errors import NtlabError
from ntlab.metrics import directions
from ntlab.tasks import CUSTOM, FunctionEvaluator, TaskSpec


def log_ctcvr(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pCTCVR, log(1 − pCTCVR)) of ESMM logits [N, 2], exact and finite for any
    finite logits: with p = σ(x)σ(y),
    log p = −softplus(−x) − softplus(−y) and, since
    1 − p = (e^−x + e^−y + e^−(x+y)) / ((1 + e^−x)(1 + e^−y)),
    log(1 − p) = logsumexp(−x, −y, −x−y) − softplus(−x) − softplus(−y)."""
    x, y = logits[:, 0], logits[:, 1]
    both = -F.softplus(-x) - F.softplus(-y)
    rest = torch.logsumexp(torch.stack([-x, -y, -x - y], -1), -1)
    return both, rest + both


def _bce_log(log_p: torch.Tensor, log_q: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy from log p and log(1 − p)."""
    return -(label * log_p + (1 - label) * log_q).mean()


def ctr_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of the one logit [N, 1] against click (target [N, 2])."""
    return F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0])


def ctcvr_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ESMM's loss: BCE(pCTR, click) + BCE(pCTCVR, conversion); logits [N, 2]."""
    ctr = F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0])
    return ctr + _bce_log(*log_ctcvr(logits), target[:, 1])


def auc_points(score: torch.Tensor, label: torch.Tensor) -> float:
    """100 · ROC AUC of `score` against binary `label` (ties count one half)."""
    from sklearn.metrics import roc_auc_score

    label = label.detach().cpu().double().numpy()
    positives = int((label > 0.5).sum())
    if positives == 0 or positives == len(label):
        raise NtlabError(
            f"an AUC needs positive and negative samples; these {len(label)} samples have "
            f"{'no' if positives == 0 else 'only'} positives (is --val-samples too small?)"
        )
    return 100.0 * float(roc_auc_score(label, score.detach().cpu().double().numpy()))


def _ctr_metrics() -> dict:
    return {
        "auc": lambda out, y: auc_points(out[:, 0], y[:, 0]),
        "logloss": lambda out, y: ctr_loss(out, y).item(),
    }


def _ctcvr_metrics() -> dict:
    def auc(out, y):  # log pCTCVR ranks as pCTCVR does, without the product's underflow
        return auc_points(log_ctcvr(out)[0], y[:, 1])

    return {
        "auc": auc,
        "logloss": lambda out, y: _bce_log(*log_ctcvr(out), y[:, 1]).item(),
        "ctr_auc": lambda out, y: auc_points(out[:, 0], y[:, 0]),
    }


def ctr_task(market: str = "") -> TaskSpec:
    """A CTR tower on the backbone (its `task_head(1)`)."""
    where = f" in {market}" if market else ""
    return TaskSpec(
        kind=CUSTOM,
        head=None,
        loss=ctr_loss,
        metrics=directions("auc", "logloss"),
        primary="auc",
        evaluator=lambda: FunctionEvaluator(_ctr_metrics()),
        outputs=1,
        description=f"click-through rate{where}: AUC of pCTR against click",
    )


def ctcvr_task(market: str = "") -> TaskSpec:
    """A whole ESMM (CTR and CVR towers: the backbone's `task_head(2)`)."""
    where = f" in {market}" if market else ""
    return TaskSpec(
        kind=CUSTOM,
        head=None,
        loss=ctcvr_loss,
        metrics=directions("auc", "logloss", "ctr_auc"),
        primary="auc",
        evaluator=lambda: FunctionEvaluator(_ctcvr_metrics()),
        outputs=2,
        description=f"ESMM{where}: AUC of pCTR·pCVR against conversion",
        delta_m_metrics=("auc", "logloss"),
    )
