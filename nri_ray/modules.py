"""The module library: one node module and K edge modules, with the K edge modules stacked.

Alet et al. (NeurIPS 2019) compose a graph network from a small library of MLP modules: every
directed edge of a task's graph runs one of K edge modules, every node runs the node module.
The published architecture (REFERENCE.md 1.2) is edge 8-256-256-256 with a final ReLU and node
260-256-256-256-4 with no output activation; both are configurable here.

The K edge modules are stored as stacked parameters (`weight_l: [modules, in, out]`,
`bias_l: [modules, out]`) so that one module's rows can be run with plain matmuls and all
modules can be addressed by index without a Python list of nn.Modules. Initialization follows
`torch.nn.Linear` (uniform in +-1/sqrt(fan_in) for weights and biases), drawn from an explicit
`torch.Generator`.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)


class MLP(nn.Module):
    """A plain MLP: Linear, ReLU, ..., Linear, then `final` ('relu' or 'none')."""

    def __init__(self, sizes: list[int], final: str, generator: torch.Generator):
        super().__init__()
        self.weights = nn.ParameterList(_uniform((a, b), a, generator) for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(_uniform((b,), a, generator) for a, b in zip(sizes[:-1], sizes[1:]))
        self.final = final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.addmm(b, x, w)
            if i < last or self.final == "relu":
                x = x.relu_()  # in place: addmm's backward does not keep its output
        return x


class EdgeModules(nn.Module):
    """K edge MLPs with stacked parameters.

    Shape:
        weights[l]: `[modules, in_l, out_l]`; biases[l]: `[modules, out_l]`.
        forward(k, x): x `[rows, in]` -> `[rows, out]` through module k.
    """

    def __init__(self, num_modules: int, sizes: list[int], final: str, generator: torch.Generator):
        super().__init__()
        self.num_modules = num_modules
        self.weights = nn.ParameterList(
            _uniform((num_modules, a, b), a, generator) for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(
            _uniform((num_modules, b), a, generator) for a, b in zip(sizes[:-1], sizes[1:]))
        self.final = final

    def forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.addmm(b[k], x, w[k])
            if i < last or self.final == "relu":
                x = x.relu_()  # in place: addmm's backward does not keep its output
        return x


class ModuleLibrary(nn.Module):
    """One node module and K edge modules for particles with `dims` state dimensions.

    Update rule of one message-passing step (one predicted frame), for edge (s -> r) with module
    sigma_{sr}:  m_{sr} = h_{sigma_{sr}}([x_s; x_r]),  x_r <- x_r + g([sum_s m_{sr}; x_r]).

    Args:
        num_edge_modules: K >= 2.
        dims: state dimensions per node (4: x, y, vx, vy).
        edge_hidden: widths of the edge MLP after its input (published: 256, 256, 256).
        node_hidden: hidden widths of the node MLP (published: 256, 256, 256).
        seed: initialization seed.
    """

    def __init__(self, num_edge_modules: int, dims: int, edge_hidden: list[int], node_hidden: list[int],
                 seed: int, edge_final: str = "relu", init_spread: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dims = dims
        self.message_size = edge_hidden[-1]
        self.edges = EdgeModules(num_edge_modules, [2 * dims] + list(edge_hidden), edge_final, g)
        self.node = MLP([self.message_size + dims] + list(node_hidden) + [dims], "none", g)
        with torch.no_grad():
            # Module k's output layer starts scaled by init_spread ** k: modules that start apart
            # let SA's assignments and the gradient pull them to different roles at once, instead
            # of all modules first learning the same averaged edge function.
            scale = init_spread ** torch.arange(num_edge_modules, dtype=torch.float32)
            self.edges.weights[-1].mul_(scale.view(-1, 1, 1))
            self.edges.biases[-1].mul_(scale.view(-1, 1))

    @property
    def num_edge_modules(self) -> int:
        return self.edges.num_modules
