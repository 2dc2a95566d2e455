"""Backbones and multi-task models."""

from ntlab.models.backbones import BACKBONES, SmallCNN
from ntlab.models.multitask import MultiTaskModel

__all__ = ["BACKBONES", "MultiTaskModel", "SmallCNN"]
