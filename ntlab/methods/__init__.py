"""Weighting methods: each turns (target, auxiliary tasks, λ) into weighted loss terms.

Registered by name; the CLI's choices and help text come from this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ntlab.core.train import LossTerm
from ntlab.registry import Registry

AUX_TERM = "aux"  # the name of the mixed auxiliary term of Eq. 1


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    uses_aux: bool
    build_terms: Callable[[str, list[str], float], list[LossTerm]]
    uses_lam: bool = False

    def terms(self, target: str, aux: list[str], lam: float = 1.0) -> list[LossTerm]:
        return self.build_terms(target, aux if self.uses_aux else [], lam)


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, summary: str, uses_aux: bool = True, uses_lam: bool = False):
    def decorator(fn: Callable[[str, list[str], float], list[LossTerm]]):
        METHODS.register(name)(Method(name, summary, uses_aux, fn, uses_lam))
        return fn

    return decorator


def target_term(target: str) -> LossTerm:
    return LossTerm(target, (target,), 1.0)


@register_method("stl", "single-task learning: the target alone", uses_aux=False)
def _stl(target: str, aux: list[str], lam: float) -> list[LossTerm]:
    return [target_term(target)]


@register_method(
    "ew", "equal weighting: target + every auxiliary task, each its own batch, weight 1"
)
def _ew(target: str, aux: list[str], lam: float) -> list[LossTerm]:
    return [target_term(target)] + [LossTerm(a, (a,), 1.0) for a in aux]


@register_method(
    "fixed",
    "Eq. 1: target (weight 1) + the auxiliary tasks mixed into one, weight λ",
    uses_lam=True,
)
def _fixed(target: str, aux: list[str], lam: float) -> list[LossTerm]:
    return [target_term(target), LossTerm(AUX_TERM, tuple(aux), lam)]


def get_method(name: str) -> Method:
    return METHODS.get(name)
