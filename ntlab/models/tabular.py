"""Tabular backbones for the recommendation benchmarks (`markets`, `aliexpress`): ESMM and
MMoE as MTReclib builds them (github.com/easezyc/Multitask-Recommendation-Library).

Inputs are float tensors [N, F + D]: F categorical indices (exact floats, 0 the reserved
index of values unseen in training) then D standardised numerical columns; the benchmark's
`TaskData.inputs` = {"categorical": [vocabulary size per field], "numerical": D} sizes the
embeddings.

- `esmm`: one embedding table per categorical field (dim E) and Linear(D → E) for the
  numericals, concatenated: the backbone's output has (F + 1)·E features. Each task's
  head (`task_head(outputs)`) is one tower per output: an MLP bottom (512, 256) then a
  tower MLP (128, 64) then one logit, ReLU and dropout 0.2 after each hidden layer.
- `mmoe`: the same embedding, and EXPERTS (8) expert MLPs (512, 256) on it; the output is
  the embedding concatenated with the experts' outputs. Each tower of a head has its own
  softmax gate over the experts (a linear layer on the embedding part) and an MLP
  (128, 64) → 1 logit on the gated mix of experts.

E is `--width` (default 16; MTReclib's is 128: `--width 128`). Unlike MTReclib's MLPs,
there is no BatchNorm: ntlab trains a head on whatever share of a mixed batch its task
gets (one sample, under some methods), where batch statistics are undefined.
"""

from __future__ import annotations

import torch
from torch import nn

from ntlab.checks import MAX_WIDTH, check_number
from ntlab.errors import NtlabError

BOTTOM = (512, 256)
TOWER = (128, 64)
DROPOUT = 0.2
EXPERTS = 8
TABULAR_BENCHMARKS = "markets, aliexpress"


def mlp(dims: tuple[int, ...], dropout: float, output: bool = True) -> nn.Sequential:
    """Linear → ReLU → Dropout per hidden size of dims[1:], then a Linear to one logit."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims, dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout)]
    if output:
        layers.append(nn.Linear(dims[-1], 1))
    return nn.Sequential(*layers)


class Embedding(nn.Module):
    """One table per categorical field (stored as one table with offsets) and a linear
    layer for the numericals: [N, F + D] → [N, (F + 1)·E]."""

    def __init__(self, vocab: list[int], numerical: int, dim: int) -> None:
        super().__init__()
        self.fields, self.numerical = len(vocab), numerical
        self.table = nn.Embedding(sum(vocab), dim)
        nn.init.xavier_uniform_(self.table.weight)  # as MTReclib's EmbeddingLayer
        self.register_buffer("offsets", torch.tensor([0, *vocab[:-1]]).cumsum(0), persistent=False)
        self.dense = nn.Linear(numerical, dim)
        self.out_features = (self.fields + 1) * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x[:, : self.fields].long() + self.offsets
        cat = self.table(index)  # [N, F, E]
        num = self.dense(x[:, self.fields :])[:, None]  # [N, 1, E]
        return torch.cat([cat, num], 1).flatten(1)


class Towers(nn.Module):
    """`outputs` towers on the same features, their logits side by side: [N, outputs]."""

    def __init__(self, towers: list[nn.Module]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([tower(features) for tower in self.towers], 1)


class ESMMBackbone(nn.Module):
    def __init__(self, vocab: list[int], numerical: int, dim: int, dropout: float = DROPOUT):
        super().__init__()
        self.embedding = Embedding(vocab, numerical, dim)
        self.out_features = self.embedding.out_features
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def task_head(self, outputs: int) -> nn.Module:
        dims = (self.out_features, *BOTTOM, *TOWER)
        return Towers([mlp(dims, self.dropout) for _ in range(outputs)])


class GatedTower(nn.Module):
    """A softmax gate over the experts (from the embedding part of the features) and a
    tower MLP on the gated mix."""

    def __init__(self, embed: int, experts: int, expert_dim: int, dropout: float) -> None:
        super().__init__()
        self.embed, self.experts, self.expert_dim = embed, experts, expert_dim
        self.gate = nn.Linear(embed, experts)
        self.tower = mlp((expert_dim, *TOWER), dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        emb, out = features[:, : self.embed], features[:, self.embed :]
        weights = self.gate(emb).softmax(1)  # [N, experts]
        mix = (weights[:, :, None] * out.view(-1, self.experts, self.expert_dim)).sum(1)
        return self.tower(mix)


class MMoEBackbone(nn.Module):
    def __init__(
        self,
        vocab: list[int],
        numerical: int,
        dim: int,
        experts: int = EXPERTS,
        dropout: float = DROPOUT,
    ):
        super().__init__()
        self.embedding = Embedding(vocab, numerical, dim)
        self.embed = self.embedding.out_features
        self.experts = nn.ModuleList(
            mlp((self.embed, *BOTTOM), dropout, output=False) for _ in range(experts)
        )
        self.expert_dim = BOTTOM[-1]
        self.out_features = self.embed + experts * self.expert_dim
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(x)
        return torch.cat([emb, *(expert(emb) for expert in self.experts)], 1)

    def task_head(self, outputs: int) -> nn.Module:
        return Towers(
            [
                GatedTower(self.embed, len(self.experts), self.expert_dim, self.dropout)
                for _ in range(outputs)
            ]
        )


def _tabular_inputs(name: str, inputs: dict | None, input_shape) -> tuple[list[int], int]:
    """The vocabulary sizes and numerical count a tabular backbone needs, checked."""
    if not isinstance(inputs, dict) or "categorical" not in inputs:
        shape = f" (these inputs are {list(input_shape)})" if input_shape else ""
        raise NtlabError(
            f"the {name} backbone is for tabular recommendation data ({TABULAR_BENCHMARKS})"
            f"{shape}; pick an image backbone, e.g. --backbone cnn"
        )
    vocab = [int(v) for v in inputs["categorical"]]
    numerical = int(inputs.get("numerical", 0))
    if not vocab or min(vocab) < 1 or numerical < 1:
        raise NtlabError(f"the {name} backbone needs categorical and numerical columns")
    if input_shape is not None and tuple(input_shape) != (len(vocab) + numerical,):
        raise NtlabError(
            f"the {name} backbone expects rows of {len(vocab) + numerical} values, "
            f"got inputs {list(input_shape)}"
        )
    return vocab, numerical


def build_tabular(
    name: str, width: int = 16, inputs=None, input_shape=None, weights=None, **_: object
) -> nn.Module:
    """ESMM's or MMoE's backbone with embedding dimension `width`."""
    from ntlab.models.backbones import load_weights

    check_number("--width", width, low=1, high=MAX_WIDTH, integer=True)
    vocab, numerical = _tabular_inputs(name, inputs, input_shape)
    cls = ESMMBackbone if name == "esmm" else MMoEBackbone
    model = cls(vocab, numerical, width)
    if weights is not None:
        load_weights(model, weights)
    return model
