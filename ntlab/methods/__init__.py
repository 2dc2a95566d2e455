"""Weighting methods: each turns (target, auxiliary tasks, λ) into weighted loss terms and,
for the adaptive ones, a rule that sets the gradients of every step.

Registered by name (`METHODS`); the CLI's choices and help text come from this registry.
Every method trains in the one training loop (`ntlab.core.train.train`):

- static: `stl`, `ew`, `fixed` (Σ_k ν_k L_k with fixed ν);
- loss weighting: `uw`, `dwa`, `gradnorm`, `rlw` (ν_k change during training);
- gradient balancing: `mgda`, `pcgrad`, `imtl`, `cagrad`, `nashmtl`, `gradvac`, `upgrad`,
  `aligned-mtl` (TorchJD's aggregators of the per-task gradients on the shared backbone);
- auxiliary-task methods: `gcs`, `ol-aux`, `arml`, `auto-lambda`, `post-train` (the target
  is the primary task; the auxiliary tasks are weighted for its sake).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ntlab.catalog import METHOD_INFO
from ntlab.core.rules import Rule, RuleContext
from ntlab.core.train import LossTerm
from ntlab.registry import Registry

AUX_TERM = "aux"  # the name of the mixed auxiliary term of Eq. 1
KINDS = ("static", "loss weighting", "gradient balancing", "auxiliary")  # of registered methods


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    uses_aux: bool
    build_terms: Callable[[str, list[str], float], list[LossTerm]]
    uses_lam: bool = False
    kind: str = "static"
    rule: Callable[[RuleContext], Rule] | None = None  # None: the static weighted sum

    def terms(self, target: str, aux: list[str], lam: float = 1.0) -> list[LossTerm]:
        return self.build_terms(target, aux if self.uses_aux else [], lam)


METHODS: Registry[Method] = Registry("method")


def _info(name: str):
    """The catalog's entry of `name` (its one line and kind are declared there, torch-free)."""
    info = METHOD_INFO.get(name)
    if info is None or info.kind not in KINDS:
        raise ValueError(f"method {name!r} needs an entry in ntlab.catalog.METHOD_INFO")
    return info


def register_method(name: str, uses_aux: bool = True, uses_lam: bool = False):
    def decorator(fn: Callable[[str, list[str], float], list[LossTerm]]):
        info = _info(name)
        METHODS.register(name)(Method(name, info.summary, uses_aux, fn, uses_lam, info.kind))
        return fn

    return decorator


def register_rule(name: str):
    """Register an adaptive method: one term per task (as EW), gradients from its rule."""
    info = _info(name)

    def decorator(factory: Callable[[RuleContext], Rule]):
        METHODS.register(name)(Method(name, info.summary, True, _ew, kind=info.kind, rule=factory))
        return factory

    return decorator


def target_term(target: str) -> LossTerm:
    return LossTerm(target, (target,), 1.0)


@register_method("stl", uses_aux=False)
def _stl(target: str, aux: list[str], lam: float) -> list[LossTerm]:
    return [target_term(target)]


@register_method("ew")
def _ew(target: str, aux: list[str], lam: float) -> list[LossTerm]:
    return [target_term(target)] + [LossTerm(a, (a,), 1.0) for a in aux]


@register_method("fixed", uses_lam=True)
def _fixed(target: str, aux: list[str], lam: float) -> list[LossTerm]:
    return [target_term(target), LossTerm(AUX_TERM, tuple(aux), lam)]


def get_method(name: str) -> Method:
    return METHODS.get(name)


# The adaptive methods register themselves on import.
from ntlab.methods import auxiliary, balancing, weighting  # noqa: E402, F401
