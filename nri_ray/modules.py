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

from .config import EDGE_INPUTS


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


DISTANCE_EPS = 1e-6  # distance = sqrt(|p_s - p_r|^2 + eps): smooth, with a finite gradient at 0


def position_dims(dims: int) -> int:
    """State dims that are positions: the first half when dims is even (positions then velocities, the
    NRI layout and data import's pos-vel normalization), else all of them."""
    return dims // 2 if dims % 2 == 0 else dims


def edge_input_size(kind: str, dims: int) -> int:
    """Width of an edge module's input: [x_s; x_r] (absolute) or [x_s - x_r; x_r; distance] (relative)."""
    return 2 * dims if kind == "absolute" else 2 * dims + 1


def relative_features(pairs: torch.Tensor, dims: int) -> torch.Tensor:
    """Relative edge inputs from absolute ones: `[rows, 2 * dims]` [x_s; x_r] -> `[rows, 2 * dims + 1]`
    [x_s - x_r; x_r; |p_s - p_r|] (p: the position dims). Autograd-friendly; engine.py has the backward."""
    send, recv = pairs[:, :dims], pairs[:, dims:]
    rel = send - recv  # [rows, dims]
    p = position_dims(dims)
    dist = (rel[:, :p].square().sum(dim=1, keepdim=True) + DISTANCE_EPS).sqrt()  # [rows, 1]
    return torch.cat([rel, recv, dist], dim=1)


def relative_backward(grad: torch.Tensor, features: torch.Tensor, dims: int, out: torch.Tensor) -> torch.Tensor:
    """d loss / d [x_s; x_r] `[rows, 2 * dims]` into `out`, from the gradient `[rows, 2 * dims + 1]` with
    respect to `relative_features`' output `features` (which holds x_s - x_r and the distance)."""
    p = position_dims(dims)
    g_rel, g_recv, g_dist = grad[:, :dims], grad[:, dims:2 * dims], grad[:, 2 * dims:]
    d_send, d_recv = out[:, :dims], out[:, dims:]
    d_send.copy_(g_rel)
    # d dist / d p_s = (p_s - p_r) / dist
    d_send[:, :p].addcmul_(features[:, :p], g_dist / features[:, 2 * dims:])
    torch.sub(g_recv, d_send, out=d_recv)  # x_r enters as itself and as -(x_s - x_r), -dist's gradient
    return out


def prediction_loss(err: torch.Tensor, delta: float) -> torch.Tensor:
    """Per-value loss of prediction errors: err^2 (delta = 0), or the Huber loss scaled to match it below
    delta, err^2 for |err| <= delta and 2 delta |err| - delta^2 above (linear, so that a few large errors,
    such as close encounters of charges, do not dominate the gradient and the SA comparison)."""
    if not delta:
        return err.square()
    a = err.abs()
    return torch.where(a <= delta, err.square(), a.mul(2 * delta).sub_(delta * delta))


def prediction_loss_grad(err: torch.Tensor, delta: float) -> torch.Tensor:
    """d prediction_loss / d err, halved (err, or err clipped to [-delta, delta]); a new tensor or err itself."""
    return err.clamp(-delta, delta) if delta else err


class ModuleLibrary(nn.Module):
    """One node module and K edge modules for particles with `dims` state dimensions.

    Update rule of one message-passing step (one predicted frame), for edge (s -> r) with module
    sigma_{sr}:  m_{sr} = h_{sigma_{sr}}([x_s; x_r]),  x_r <- x_r + g([sum_s m_{sr}; x_r]).
    With `edge_inputs="relative"` the edge module sees [x_s - x_r; x_r; |p_s - p_r|] instead (the same
    information plus the distance, which a pairwise force such as Coulomb's is a function of).

    Args:
        num_edge_modules: K >= 2.
        dims: state dimensions per node (4: x, y, vx, vy).
        edge_hidden: widths of the edge MLP after its input (published: 256, 256, 256).
        node_hidden: hidden widths of the node MLP (published: 256, 256, 256).
        seed: initialization seed.
        edge_inputs: "absolute" ([x_s; x_r], the paper) or "relative".
        loss_delta: 0 (squared error, the paper) or the Huber threshold of `prediction_loss`: the loss
            training and SA score rollouts by (a setting, not a parameter: the run's config holds it).
    """

    def __init__(self, num_edge_modules: int, dims: int, edge_hidden: list[int], node_hidden: list[int],
                 seed: int, edge_final: str = "relu", init_spread: float = 1.0, edge_inputs: str = "absolute",
                 loss_delta: float = 0.0):
        super().__init__()
        if edge_inputs not in EDGE_INPUTS:
            raise ValueError(f"edge_inputs: got {edge_inputs!r}, expected one of {', '.join(EDGE_INPUTS)}")
        g = torch.Generator().manual_seed(seed)
        self.dims = dims
        self.edge_inputs = edge_inputs
        self.loss_delta = float(loss_delta)  # the prediction loss every rollout is scored by (prediction_loss)
        self.message_size = edge_hidden[-1]
        self.edges = EdgeModules(num_edge_modules, [edge_input_size(edge_inputs, dims)] + list(edge_hidden),
                                 edge_final, g)
        self.node = MLP([self.message_size + dims] + list(node_hidden) + [dims], "none", g)
        with torch.no_grad():
            # Module k's output layer starts scaled by init_spread ** k: modules that start apart
            # let SA's assignments and the gradient pull them to different roles at once, instead
            # of all modules first learning the same averaged edge function.
            scale = init_spread ** torch.arange(num_edge_modules, dtype=torch.float32)
            self.edges.weights[-1].mul_(scale.view(-1, 1, 1))
            self.edges.biases[-1].mul_(scale.view(-1, 1))

    def edge_features(self, pairs: torch.Tensor) -> torch.Tensor:
        """Edge module input from `[rows, 2 * dims]` [x_s; x_r] (the identity for absolute inputs)."""
        return pairs if self.edge_inputs == "absolute" else relative_features(pairs, self.dims)

    @property
    def num_edge_modules(self) -> int:
        return self.edges.num_modules
