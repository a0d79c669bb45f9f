"""The training round's hot path: batched rollouts with a hand-written backward, no autograd.

A BounceGrad round evaluates every task's current and proposed structures (simulated
annealing), keeps one per task, and takes the module gradient of the kept ones. With autograd
that costs five rollout passes: two SA forwards without a graph, then a forward and a backward
(two passes' worth of matmuls) on the chosen structures. Here the SA forwards *record* their
activations on a `Tape`; the backward then gathers the chosen structures' rows out of the tape
and runs on those rows only, so the round does four passes and no recompute. `gnn.py` is the
readable autograd reference of the same math; tests check the two against each other.

Layout of one recorded evaluation (`gnn.Layout`, shared with the autograd rollout; the backward's own plan is `spread_plan`): S structure rows (tasks, or the current and
the proposed structure of each task), each rolled out from A anchor frames, gives G = A * S
graphs, ordered anchor-major (graph g = a * S + j) so that the graphs still running at a late
step are a prefix: the last anchor's rollout stops at the final frame (anchors 0, 10, .., 40 of
49 frames: the last runs 8 steps, not 10), and those steps are not computed at all. Edges are
grouped by module, and within a module by anchor, so at every step each module's live edges are
the front of its block. Messages are summed per receiver through a receiver-major gather (every
node has exactly n - 1 incoming edges): deterministic on every device.

Per step and module the forward is a chain of `addmm` + in-place ReLU written into preallocated
buffers (a grow-only `Workspace`, reused across rounds, so large tensors are neither allocated
nor page-faulted per step). The backward per step mirrors it: node MLP, the per-receiver sum's
backward (a gather of the receiver's gradient onto each edge), each module's chain on its own
rows, and the edge inputs' gradient summed back per sender and per receiver.

This module imports no ray (math core).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .gnn import Layout, active_anchors, anchored_targets, make_layout
from .modules import ModuleLibrary, prediction_loss, prediction_loss_grad, relative_backward, relative_features


def spread_plan(layout: Layout, n_nodes: int, dims: int) -> torch.Tensor:
    """The backward's plan for edge inputs: `[G * nodes * 2 (n-1) * dims]` flat positions in the
    edge-input gradient `[G * edges, 2 * dims]` of each node's sender halves (its n-1 outgoing edges),
    then its receiver halves (n-1 incoming): summing them gives the node's gradient."""
    dim = torch.arange(dims, device=layout.position.device)
    outgoing = layout.position.view(-1, n_nodes - 1)  # [G * nodes, n-1]: canonical order is sender-major
    halves = torch.cat([outgoing * (2 * dims), layout.incoming.view(-1, n_nodes - 1) * (2 * dims) + dims], dim=1)
    return (halves.unsqueeze(-1) + dim).reshape(-1)  # [G * nodes, 2 (n-1), dims] flat


class Workspace:
    """Grow-only named buffers (zero-filled once): the same memory serves every step and round."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self._flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        numel = 1
        for s in shape:
            numel *= s
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel:
            flat = self._flat[name] = torch.zeros(max(numel, 1), dtype=self.dtype, device=self.device)
        return flat[:numel].view(*shape)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._flat.values())


class _Recorded(NamedTuple):
    layout: Layout
    edge_offset: int  # first edge row of this evaluation in the tape's buffers
    node_offset: int  # first node row


def _per_module(stacked) -> list[list[torch.Tensor]]:
    """`[layer][module]` views of stacked `[modules, ...]` tensors."""
    return [list(t.unbind(0)) for t in stacked]


def _relu_backward_(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """grad *= (output > 0), in place (output is the ReLU's output)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, output, 0.0, grad_input=grad)


class Tape:
    """Records batched rollouts (SA evaluations) and back-propagates chosen structures from them.

    Args:
        lib: the module library (its parameters are read; `backward` adds to their `.grad`).
        n_nodes, frames: trajectory shape; rollout: steps per anchor.
        workspace: buffers to (re)use.
    Usage per chunk of tasks: `reset(rows)`, then `record(...)` for each evaluation (returns
    per-row losses), then `backward(...)` once for the structures kept.
    """

    def __init__(self, lib: ModuleLibrary, n_nodes: int, frames: int, rollout: int, workspace: Workspace):
        self.lib, self.n, self.frames, self.rollout, self.ws = lib, n_nodes, frames, rollout, workspace
        self.anchors, self.live = active_anchors(frames, rollout)
        self.edges = n_nodes * (n_nodes - 1)
        self.dims = lib.dims
        self.relative = lib.edge_inputs == "relative"
        self.edge_in_width = lib.edges.weights[0].shape[1]  # 2 * dims, or 2 * dims + 1 (relative)
        self.edge_widths = [w.shape[-1] for w in lib.edges.weights]
        self.node_widths = [w.shape[-1] for w in lib.node.weights]
        self.edge_relu = [True] * (len(self.edge_widths) - 1) + [lib.edges.final == "relu"]
        self.node_relu = [True] * (len(self.node_widths) - 1) + [lib.node.final == "relu"]
        self.valid = sum(self.live)  # valid (anchor, step) pairs per task: the loss's denominator
        self.recorded: list[_Recorded] = []
        self.keep = False  # until reset(rows, keep=True)

    def bytes_per_row(self) -> int:
        """Tape bytes one recorded structure row takes (all anchors and steps)."""
        per_step = self.edges * (self.edge_in_width + sum(self.edge_widths)) + self.n * (
            self.edge_widths[-1] + self.dims + sum(self.node_widths))
        return len(self.anchors) * self.rollout * per_step * torch.finfo(self.ws.dtype).bits // 8

    # -- buffers: [steps, rows, width] per layer; rows = capacity over all evaluations of a chunk --
    def reset(self, rows: int, keep: bool = True) -> None:
        """Start a chunk whose evaluations hold `rows` structure rows in all.

        keep=False: losses only (no `backward`); every step reuses one step's buffers.
        """
        A, n, d = len(self.anchors), self.n, self.dims
        self.keep = keep
        r = self.rollout if keep else 1
        self.edge_cap, self.node_cap = rows * A * self.edges, rows * A * n
        self.edge_in = self.ws.get("edge_in", r, self.edge_cap, self.edge_in_width)
        self.edge_out = [self.ws.get(f"edge_{l}", r, self.edge_cap, w) for l, w in enumerate(self.edge_widths)]
        self.node_in = self.ws.get("node_in", r, self.node_cap, self.edge_widths[-1] + d)
        self.node_out = [self.ws.get(f"node_{l}", r, self.node_cap, w) for l, w in enumerate(self.node_widths)]
        self.recorded = []
        self._edge_used = self._node_used = 0

    def _targets(self, trajectories: torch.Tensor, task_rows: torch.Tensor):
        """Start states `[A * S * n, d]` and targets `[steps, A, S, n, d]`, anchor-major."""
        start, targets, _ = anchored_targets(trajectories[task_rows], self.rollout)  # [S, A, n, d], [S, A, steps, n, d]
        start = start.transpose(0, 1).reshape(-1, self.dims)  # [A, S, n, d] -> [A * S * n, d]
        return start, targets.permute(2, 1, 0, 3, 4)  # [S, A, steps, n, d] -> [steps, A, S, n, d]

    @torch.no_grad()
    def record(self, trajectories: torch.Tensor, structures: torch.Tensor, task_rows: torch.Tensor) -> torch.Tensor:
        """Roll out `[S, edges]` structures on trajectories[task_rows] from every anchor, keeping activations.

        Args:
            trajectories: `[tasks, time, nodes, dims]` of the chunk.
            structures: `[S, edges]`; task_rows: `[S]` row of each structure's task in `trajectories`.
        Returns:
            `[S]` losses (as `gnn.anchored_losses`).
        """
        n, d = self.n, self.dims
        layout = make_layout(structures, n, d, self.lib.num_edge_modules, self.live)
        S = layout.rows
        e0, n0 = self._edge_used, self._node_used
        R, N = len(self.anchors) * S * self.edges, len(self.anchors) * S * n
        if e0 + R > self.edge_cap:
            raise ValueError(f"tape holds {self.edge_cap} edge rows, this evaluation needs {e0 + R}")
        self._edge_used, self._node_used = e0 + R, n0 + N
        self.recorded.append(_Recorded(layout, e0, n0))
        x, targets = self._targets(trajectories, task_rows)  # x: [G * n, d] state, updated in place
        x = x.contiguous()
        graph_loss = torch.zeros(layout.graphs[0], dtype=x.dtype, device=x.device)  # [G] summed squared errors per graph
        ew, eb = _per_module(self.lib.edges.weights), _per_module(self.lib.edges.biases)  # [layer][module] views
        for t in range(self.rollout):  # the time loop: each step depends on the previous one
            graphs = layout.graphs[t]
            if graphs == 0:
                break  # no anchor has a target this far (fewer frames than one rollout)
            rows_n = graphs * n
            slot = t if self.keep else 0
            edge_in = self.edge_in[slot, e0:e0 + R]  # [R, edge input]
            if self.relative:
                self._relative_inputs(x, layout.pair, edge_in)
            else:
                torch.index_select(x.view(-1), 0, layout.pair, out=edge_in.view(-1))  # [x_send; x_recv] per edge
            outs = [o[slot, e0:e0 + R] for o in self.edge_out]  # per layer [R, width]
            for k, (start, live) in enumerate(layout.blocks):  # the K modules
                stop = start + live[t]
                if stop == start:
                    continue
                h = edge_in[start:stop]
                for l, out in enumerate(outs):
                    torch.addmm(eb[l][k], h, ew[l][k], out=out[start:stop])
                    h = out[start:stop]
                    if self.edge_relu[l]:
                        h.relu_()
            messages = outs[-1]  # [R, message]
            node_in = self.node_in[slot, n0:n0 + rows_n]  # [rows_n, message + d]
            m = messages.shape[1]
            # Receiver-major gather [rows_n, n-1, message], summed over the n-1 incoming edges.
            per_receiver = self.ws.get("per_receiver", rows_n * (n - 1), m)
            torch.index_select(messages, 0, layout.incoming[: rows_n * (n - 1)], out=per_receiver)
            torch.sum(per_receiver.view(rows_n, n - 1, m), dim=1, out=node_in[:, :m])
            node_in[:, m:] = x[:rows_n]
            h = node_in
            for l, (w, b) in enumerate(zip(self.lib.node.weights, self.lib.node.biases)):
                out = self.node_out[l][slot, n0:n0 + rows_n]
                torch.addmm(b, h, w, out=out)
                h = out
                if self.node_relu[l]:
                    h.relu_()
            x[:rows_n] += h  # residual update: the prediction of this step
            err = x[:rows_n].view(graphs, n * d) - targets[t, : graphs // S].reshape(graphs, n * d)
            graph_loss[:graphs] += prediction_loss(err, self.lib.loss_delta).mean(dim=1)
        return graph_loss.view(len(self.anchors), S).sum(dim=0) / self.valid

    def _relative_inputs(self, x: torch.Tensor, pair: torch.Tensor, edge_in: torch.Tensor) -> None:
        """[x_s - x_r; x_r; |p_s - p_r|] of every edge into `edge_in` `[R, 2d + 1]` (modules.relative_features)."""
        d = self.dims
        pairs = self.ws.get("pairs", edge_in.shape[0], 2 * d)  # [R, 2d]: [x_send; x_recv]
        torch.index_select(x.view(-1), 0, pair, out=pairs.view(-1))
        edge_in.copy_(relative_features(pairs, d))  # a small temporary next to the module matmuls

    def _sources(self, structures: torch.Tensor, source_eval: torch.Tensor, source_row: torch.Tensor,
                 layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """Tape rows of the kept structures: edge rows `[G_c * edges]` in `layout`'s grouped order, node rows `[G_c * n]`."""
        device = structures.device
        c, n, E, A = structures.shape[0], self.n, self.edges, len(self.anchors)
        anchor = torch.arange(A, device=device).view(A, 1)  # [A, 1]
        edge_src = torch.zeros(A * c * E, dtype=torch.long, device=device)  # canonical order of the kept graphs
        node_src = torch.zeros(A * c * n, dtype=torch.long, device=device)
        for e, rec in enumerate(self.recorded):  # a handful of evaluations per chunk
            graph = (anchor * rec.layout.rows + source_row.view(1, c)).reshape(-1)  # [A * c] graph in evaluation e
            # Tasks kept from another evaluation may name rows beyond this one's: clamped, then not selected.
            canonical = (graph.view(-1, 1) * E + torch.arange(E, device=device)).clamp(max=rec.layout.position.numel() - 1)
            edges = rec.edge_offset + rec.layout.position[canonical].reshape(-1)  # [A * c * E]
            nodes = rec.node_offset + (graph.view(-1, 1) * n + torch.arange(n, device=device)).reshape(-1)  # [A * c * n]
            mine = (source_eval == e).view(1, c).expand(A, c)  # [A, c]
            edge_src = torch.where(mine.reshape(-1, 1).expand(-1, E).reshape(-1), edges, edge_src)
            node_src = torch.where(mine.reshape(-1, 1).expand(-1, n).reshape(-1), nodes, node_src)
        grouped = torch.empty_like(edge_src)
        grouped[layout.position] = edge_src  # canonical -> grouped order of the kept layout
        return grouped, node_src

    @torch.no_grad()
    def backward(self, trajectories: torch.Tensor, structures: torch.Tensor, source_eval: torch.Tensor,
                 source_row: torch.Tensor) -> None:
        """Add d(sum of the kept structures' losses)/d(module weights) to the parameters' `.grad`.

        Args:
            trajectories: `[c, time, nodes, dims]`, the chunk's tasks (row i = kept structure i).
            structures: `[c, edges]` the kept structures.
            source_eval, source_row: `[c]` which recorded evaluation, and which row of it, each came from.
        """
        if not self.keep:
            raise RuntimeError("Tape.backward needs the activations: reset(rows, keep=True) before recording")
        lib, n, d, E = self.lib, self.n, self.dims, self.edges
        c = structures.shape[0]
        layout = make_layout(structures, n, d, lib.num_edge_modules, self.live)
        spread = spread_plan(layout, n, d)
        edge_src, node_src = self._sources(structures, source_eval, source_row, layout)
        _, targets = self._targets(trajectories, torch.arange(c, device=structures.device))
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in lib.parameters()]
        for p, g in zip(lib.parameters(), grads):
            p.grad = g
        ew = _per_module(lib.edges.weights)  # [layer][module] views, made once
        gew = _per_module([w.grad for w in lib.edges.weights])
        geb = _per_module([b.grad for b in lib.edges.biases])
        nw, nb = list(lib.node.weights), list(lib.node.biases)
        gnw, gnb = [w.grad for w in nw], [b.grad for b in nb]
        R, N = len(self.anchors) * c * E, len(self.anchors) * c * n
        ws, m = self.ws, self.edge_widths[-1]
        # Gathered activations of the kept rows, one step at a time (scratch reused every step).
        edge_in = ws.get("b_edge_in", R, self.edge_in_width)
        edge_out = [ws.get(f"b_edge_{l}", R, w) for l, w in enumerate(self.edge_widths)]
        node_in = ws.get("b_node_in", N, m + d)
        node_out = [ws.get(f"b_node_{l}", N, w) for l, w in enumerate(self.node_widths)]
        d_edge = [ws.get(f"d_edge_{l}", R, w) for l, w in enumerate([self.edge_in_width] + self.edge_widths)]
        d_pairs = ws.get("d_pairs", R, 2 * d) if self.relative else d_edge[0]  # d loss / d [x_send; x_recv]
        d_node = [ws.get(f"d_node_{l}", N, w) for l, w in enumerate([m + d] + self.node_widths)]
        dx = torch.zeros(N, d, dtype=trajectories.dtype, device=structures.device)  # d loss / d state after the current step
        scale = 2.0 / (n * d * self.valid)
        for t in reversed(range(self.rollout)):
            graphs = layout.graphs[t]
            if graphs == 0:
                continue  # a step past every anchor's last target
            rows_n = graphs * n
            nsrc = node_src[:rows_n]
            torch.index_select(self.node_in[t], 0, nsrc, out=node_in[:rows_n])
            for l in range(len(node_out)):
                torch.index_select(self.node_out[l][t], 0, nsrc, out=node_out[l][:rows_n])
            # The prediction of step t: x_t + node output; its loss gradient joins the later steps'.
            pred = node_in[:rows_n, m:] + node_out[-1][:rows_n]
            err = pred.view(graphs, n * d) - targets[t, : graphs // c].reshape(graphs, n * d)
            dx[:rows_n].add_(prediction_loss_grad(err, self.lib.loss_delta).view(rows_n, d), alpha=scale)
            # Node MLP backward, last layer first; layer l's input is node_in (l = 0) or node_out[l-1].
            grad = d_node[-1][:rows_n]
            grad.copy_(dx[:rows_n])
            for l in reversed(range(len(nw))):
                inp = node_in[:rows_n] if l == 0 else node_out[l - 1][:rows_n]
                if self.node_relu[l]:
                    _relu_backward_(grad, node_out[l][:rows_n])
                gnw[l].addmm_(inp.t(), grad)
                gnb[l].add_(grad.sum(dim=0))
                grad_in = d_node[l][:rows_n]
                torch.mm(grad, nw[l].t(), out=grad_in)
                grad = grad_in
            dx[:rows_n] += grad[:, m:]  # through the node input's own-state half (the residual is already in dx)
            d_agg = grad[:, :m]  # [rows_n, message]
            # Edges: gather the live rows' activations, then each module's chain backward on its rows.
            esrc = edge_src
            torch.index_select(self.edge_in[t], 0, esrc, out=edge_in)
            for l in range(len(edge_out)):
                torch.index_select(self.edge_out[l][t], 0, esrc, out=edge_out[l])
            d_msg = d_edge[-1]
            torch.index_select(d_agg, 0, layout.recv.clamp(max=rows_n - 1), out=d_msg)  # each edge gets its receiver's gradient
            for k, (start, live) in enumerate(layout.blocks):
                stop = start + live[t]
                if stop == start:
                    continue
                grad = d_msg[start:stop]
                for l in reversed(range(len(ew))):
                    inp = edge_in[start:stop] if l == 0 else edge_out[l - 1][start:stop]
                    if self.edge_relu[l]:
                        _relu_backward_(grad, edge_out[l][start:stop])
                    gew[l][k].addmm_(inp.t(), grad)
                    geb[l][k].add_(grad.sum(dim=0))
                    grad_in = d_edge[l][start:stop]
                    torch.mm(grad, ew[l][k].t(), out=grad_in)
                    grad = grad_in
            if t == 0:
                break  # the first step's input is data
            if self.relative:
                relative_backward(d_edge[0], edge_in, d, out=d_pairs)
            # Edge inputs [x_send; x_recv] back to nodes: sum over each node's n-1 outgoing, then incoming, edges.
            halves = d_pairs.view(-1)[spread[: rows_n * 2 * (n - 1) * d]]  # [rows_n * 2 (n-1) * d]
            dx[:rows_n] += halves.view(rows_n, 2 * (n - 1), d).sum(dim=1)


def losses(lib: ModuleLibrary, trajectories: torch.Tensor, structures: torch.Tensor, rollout: int,
           workspace: Workspace | None = None) -> torch.Tensor:
    """`[tasks]` losses of `[tasks, edges]` structures on `[tasks, time, nodes, dims]` trajectories,
    as `gnn.anchored_losses` computes them, without autograd (SA at meta-test time)."""
    tasks, frames, n_nodes, _ = trajectories.shape
    workspace = workspace or Workspace(trajectories.device, trajectories.dtype)
    tape = Tape(lib, n_nodes, frames, rollout, workspace)
    tape.reset(tasks, keep=False)
    return tape.record(trajectories, structures, torch.arange(tasks, device=trajectories.device))
