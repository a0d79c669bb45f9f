"""Benchmark: the authors' BounceGrad round, as REFERENCE.md describes it, side by side with nri-ray's.

The authors' code is not part of this project and cannot be run here (it needs their data files
and a CUDA device). This script redoes the work one of their meta-train batches does, in their
style, from REFERENCE.md (1.3-1.7, 3.1-3.3, 4.1-4.2, 8), so that "at least 2x the authors'
implementation" can be measured on the machine at hand instead of quoted from another one:

- structures are Python dicts of per-module lists; every proposal deep-copies its structure
  (and the probabilities), picks a node, redraws its 4 incoming edges with `np.random.choice`
  and rebuilds the lists (blocked-Gibbs proposal from the encoder's softmax, moved to the host);
- each evaluation merges the B structures into one super-graph of Python lists with offsets,
  builds the one-hot sink matrices from those lists, and runs 5 anchors x 10 steps with
  autograd on: per step and module a gather of sender and receiver states, the edge MLP, and a
  dense `[5B, edges] x [edges, 256]` aggregation (quadratic in B), then the node MLP with clones;
  all 50 steps are computed, 48 used;
- old and proposed structures are evaluated as two super-graphs; per-task losses go to the host
  one task at a time; acceptance is a Python loop; the summed loss of the chosen structures is
  back-propagated through both graphs; per-task accuracy sums (with the O(E^2) bidirectional
  accuracy); the encoder (MLPStateEncoder, h = 512, BatchNorm, dropout) takes an SGD step on the
  accepted proposals; the modules an Adam step.

Not modelled: tensorboard logging, checkpoints, the meta-val pass (not part of a meta-train
batch). `reference_losses` computes the same per-task loss as `nri_ray.gnn.anchored_losses` on
the same weights (tests/test_reference_round.py checks it), so both rounds do the same math.

    python benchmarks/reference_round.py [--batch 128] [--repeats 5] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from round import round_flops, synthetic_dataset  # noqa: E402

from nri_ray import config as C  # noqa: E402
from nri_ray.graph import edge_index  # noqa: E402
from nri_ray.server import ParameterServer  # noqa: E402
from nri_ray.shard import ShardWorker  # noqa: E402
from nri_ray.train import sample_batch  # noqa: E402

STEPS = 10  # self_regress_steps: rollout length from each anchor


def mlp(sizes: list[int], final_relu: bool) -> nn.Sequential:
    """Linear layers with ReLU between them (and after the last one if final_relu), as torch_NN."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EncoderMLP(nn.Module):
    """Linear, ELU, dropout, Linear, ELU, BatchNorm over all rows (NRI's encoder block)."""

    def __init__(self, n_in: int, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2, self.bn = nn.Linear(n_in, hidden), nn.Linear(hidden, n_out), nn.BatchNorm1d(n_out)
        self.dropout = dropout

    def forward(self, x):  # x: [B, rows, features]
        h = F.dropout(F.elu(self.fc1(x)), self.dropout, training=self.training)
        h = F.elu(self.fc2(h))
        return self.bn(h.reshape(-1, h.shape[-1])).view(*h.shape)  # BN over B * rows


class StateEncoder(nn.Module):
    """The proposal encoder of REFERENCE.md 4.1: [B, 5, 49 * 4] node trajectories -> [B, 20, 2] softmax."""

    def __init__(self, n_in: int, n_nodes: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        self.mlp1 = EncoderMLP(n_in, hidden, hidden, dropout)
        self.mlp2 = EncoderMLP(2 * hidden, hidden, hidden, dropout)
        self.mlp3 = EncoderMLP(hidden, hidden, hidden, dropout)
        self.mlp4 = EncoderMLP(3 * hidden, hidden, hidden, dropout)
        self.bns = nn.ModuleList(nn.BatchNorm1d(hidden) for _ in range(4))  # the extra BN after each block
        self.fc_out = nn.Linear(hidden, 2)
        senders, receivers = edge_index(n_nodes)
        eye = torch.eye(n_nodes)
        self.register_buffer("rel_send", eye[list(senders)])  # [edges, nodes] one-hot
        self.register_buffer("rel_rec", eye[list(receivers)])
        self.n_nodes = n_nodes

    def _bn(self, i, x):
        return self.bns[i](x.reshape(-1, x.shape[-1])).view(*x.shape)

    def forward(self, x):  # x: [B, nodes, frames * dims]
        x = self._bn(0, self.mlp1(x))
        edges = torch.cat([self.rel_rec @ x, self.rel_send @ x], dim=2)  # node2edge, [receiver; sender]
        skip = self._bn(1, self.mlp2(edges))
        nodes = self.rel_rec.t() @ skip / self.n_nodes  # edge2node
        nodes = self._bn(2, self.mlp3(nodes))
        edges = torch.cat([self.rel_rec @ nodes, self.rel_send @ nodes, skip], dim=2)
        edges = self._bn(3, self.mlp4(edges))
        return torch.softmax(self.fc_out(edges), dim=-1)


class ReferenceModel:
    """One node module and K edge modules as separate nn.Modules, and the authors' batch procedures."""

    def __init__(self, n_nodes: int, frames: int, num_modules: int, edge_sizes: list[int], node_sizes: list[int],
                 seed: int = 0):
        torch.manual_seed(seed)
        self.rs = np.random.RandomState(seed)
        self.n, self.k, self.message_size = n_nodes, num_modules, edge_sizes[-1]
        senders, receivers = edge_index(n_nodes)
        self.graph = {"nodes": [[0, 0, 0, 0] for _ in range(n_nodes)],
                      "edges": [[int(s), int(r)] for s, r in zip(senders, receivers)]}
        self.node_module = mlp(node_sizes, final_relu=False)
        self.edge_modules = nn.ModuleList(mlp(edge_sizes, final_relu=True) for _ in range(num_modules))
        self.library = nn.ModuleList([self.node_module, *self.edge_modules])
        self.encoder = StateEncoder(frames * 4, n_nodes)
        self.module_opt = torch.optim.Adam(self.library.parameters(), lr=1e-3)
        self.encoder_opt = torch.optim.SGD(self.encoder.parameters(), lr=1e-3, momentum=0.9)

    # -- structures: dicts of Python lists (REFERENCE.md 1.6) --
    def new_structure(self, modules: list[int]) -> dict:
        s = {"graph": self.graph, "num_nodes": self.n, "num_edges": len(self.graph["edges"]),
             "num_edge_modules": self.k, "edge_idx_inv": list(map(int, modules)),
             "node_idx_inv": [0] * self.n, "node_idx": [list(range(self.n))]}
        self.update_edge_variables(s)
        return s

    def update_edge_variables(self, s: dict) -> None:
        s["edge_sources"] = [[] for _ in range(self.k)]
        s["edge_sinks"] = [[] for _ in range(self.k)]
        s["edge_idx"] = [[] for _ in range(self.k)]
        s["node_receives"] = [[] for _ in range(s["num_nodes"])]
        for i, m in enumerate(s["edge_idx_inv"]):
            s["edge_idx"][m].append(i)
            s["edge_sources"][m].append(self.graph["edges"][i][0])
            s["edge_sinks"][m].append(self.graph["edges"][i][1])
            s["node_receives"][self.graph["edges"][i][1]].append(i)

    def compose(self, structures: list[dict]) -> dict:
        """One super-graph of all structures: lists concatenated with node and edge offsets (1.7)."""
        mega = copy.deepcopy(structures[0])  # its graph too: the shared json dict is copied, then extended
        for b, s in enumerate(structures[1:], start=1):
            pn, pe = b * self.n, b * len(self.graph["edges"])
            mega["num_nodes"] += s["num_nodes"]
            mega["num_edges"] += s["num_edges"]
            mega["graph"]["nodes"] += s["graph"]["nodes"]
            mega["graph"]["edges"] += [[u + pn, v + pn] for u, v in s["graph"]["edges"]]
            for m in range(self.k):
                mega["edge_sources"][m] += [u + pn for u in s["edge_sources"][m]]
                mega["edge_sinks"][m] += [v + pn for v in s["edge_sinks"][m]]
                mega["edge_idx"][m] += [e + pe for e in s["edge_idx"][m]]
            mega["node_idx"][0] += [u + pn for u in s["node_idx"][0]]
            mega["node_idx_inv"] = mega["node_idx_inv"] + s["node_idx_inv"]
            mega["edge_idx_inv"] = mega["edge_idx_inv"] + s["edge_idx_inv"]
        return mega

    def rollout(self, mega: dict, x: torch.Tensor) -> torch.Tensor:
        """[time, 5B, 4] inputs -> [time - 1, 5B * 4] predictions (forward_no_weights + graph_out_to_out)."""
        nodes = x[0::STEPS].clone()  # [anchors, 5B, 4]: anchors act as the batch
        bs, n_total = nodes.shape[0], nodes.shape[1]
        incoming = [torch.zeros(bs, n_total, self.message_size) for _ in range(STEPS + 1)]  # summed messages per step
        sinks_one_hot = []
        for sinks in mega["edge_sinks"]:  # dense one-hot [5B, edges of module m], from the lists, per call
            if not sinks:
                sinks_one_hot.append(None)
                continue
            index = torch.LongTensor(np.array(sinks)).reshape(-1, len(sinks))
            sinks_one_hot.append(torch.zeros(n_total, len(sinks)).scatter_(0, index, 1.0))
        history = []
        for step in range(STEPS):
            for m, module in enumerate(self.edge_modules):
                if not mega["edge_sources"][m]:
                    continue
                sources = nodes[:, mega["edge_sources"][m], :].clone()
                sinks = nodes[:, mega["edge_sinks"][m], :].clone()
                inp = torch.cat([sources, sinks], dim=2)
                out = module(inp.view(-1, inp.shape[2])).view(bs, -1, incoming[step].shape[2])
                incoming[step] = incoming[step] + torch.matmul(sinks_one_hot[m], out)  # dense aggregation
            idx = mega["node_idx"][0]
            msg = incoming[step][:, idx, :].clone()
            old = nodes[:, idx, :].clone()
            update = self.node_module(torch.cat([msg, old], dim=2).view(-1, msg.shape[2] + old.shape[2]))
            nodes[:, idx, :] = nodes[:, idx, :].clone() + update.view(bs, -1, old.shape[2])
            history.append(nodes.clone())
        out = torch.zeros([bs * STEPS, n_total * x.shape[2]])
        for i in range(STEPS):  # interleave: row 10a + (j - 1) = anchor a after j steps
            out[i::STEPS] = history[i].reshape(bs, -1).clone()
        return out[: x.shape[0] - 1]

    def evaluate(self, structures: list[dict], trajectories: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-task losses (autograd on) of one super-graph: batched_evaluate."""
        mega = self.compose(structures)
        inp = torch.cat(trajectories, dim=1)  # [time, 5B, 4], task b in node columns 5b..5b+4
        preds = self.rollout(mega, inp).reshape(-1, *inp.shape[1:])
        preds = torch.split(preds, self.n, dim=1)
        return [F.mse_loss(p, t[1:]) for p, t in zip(preds, trajectories)]

    def propose(self, structures: list[dict], probs: np.ndarray) -> list[dict]:
        """Blocked-Gibbs proposal per task, in Python: redraw the incoming edges of one random node."""
        new = [copy.deepcopy(s) for s in structures]
        edges = np.array(self.graph["edges"])
        for s, p in zip(new, probs):
            node = self.rs.choice(range(s["num_nodes"]))
            p = copy.deepcopy(p)
            for e in np.where(edges[:, 1] == node)[0]:
                s["edge_idx_inv"][e] = int(self.rs.choice(range(self.k), p=p[e] / p[e].sum()))
            self.update_edge_variables(s)
        return new

    def batch(self, structures: list[dict], trajectories: list[torch.Tensor], labels: list[list[int]],
              temperature: float) -> list[dict]:
        """One meta-train batch (REFERENCE.md 3.1): returns the structures kept."""
        self.encoder.train()
        enc_in = torch.stack(trajectories).transpose(1, 2).reshape(len(trajectories), self.n, -1)  # [B, 5, 49*4]
        probs_t = self.encoder(enc_in)  # [B, edges, 2], with dropout
        proposed = self.propose(structures, probs_t.detach().cpu().numpy())
        old = self.evaluate(structures, trajectories)
        new = self.evaluate(proposed, trajectories)
        chosen, losses, accepted = [], [], []
        for i in range(len(structures)):  # per-task accept loop on host numbers
            lo, ln = old[i].detach().cpu().numpy(), new[i].detach().cpu().numpy()
            if ln <= lo or self.rs.rand() < np.exp((lo - ln) / temperature):
                chosen.append(proposed[i])
                losses.append(new[i])
                accepted.append(i)
            else:
                chosen.append(structures[i])
                losses.append(old[i])
        acc = sum(sum(int(a == b) for a, b in zip(s["edge_idx_inv"], lab)) for s, lab in zip(chosen, labels))
        for s in chosen:  # bidirectional accuracy: O(E^2) list.index per task
            pairs = s["graph"]["edges"]
            _ = sum(s["edge_idx_inv"][i] == s["edge_idx_inv"][pairs.index([v, u])] for i, (u, v) in enumerate(pairs))
        torch.stack(losses).sum().backward()  # through both super-graphs
        if accepted:  # encoder step on the accepted proposals only
            target = torch.tensor([chosen[i]["edge_idx_inv"] for i in accepted], dtype=torch.float32)
            loss = F.binary_cross_entropy(probs_t[accepted][:, :, 1], target) * len(accepted) / len(structures)
            self.encoder_opt.zero_grad()
            loss.backward()
            self.encoder_opt.step()
        self.module_opt.step()
        self.module_opt.zero_grad()
        self.last_accuracy = acc  # the per-batch accuracy sum the authors log
        return chosen


def reference_losses(model: ReferenceModel, trajectories: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    """`[tasks]` losses of `[tasks, edges]` structures on `[tasks, time, nodes, dims]` trajectories."""
    dicts = [model.new_structure(s.tolist()) for s in structures]
    return torch.stack(model.evaluate(dicts, [t for t in trajectories]))


class Reference:
    """The reference round on a synthetic meta-train set, one batch per call."""

    def __init__(self, trajectories: np.ndarray, labels: np.ndarray, cfg: C.Config, seed: int = 0):
        tasks, frames, n, _ = trajectories.shape
        self.model = ReferenceModel(n, frames, cfg.model.edge_modules, [8] + cfg.model.edge_widths,
                                    [cfg.model.edge_widths[-1] + 4] + cfg.model.node_widths + [4], seed)
        self.trajectories = [torch.as_tensor(t, dtype=torch.float32) for t in trajectories]  # one tensor per task
        self.labels = [list(map(int, lab)) for lab in labels]
        self.structures = [self.model.new_structure(self.model.rs.randint(0, cfg.model.edge_modules, n * (n - 1)))
                           for _ in range(tasks)]

    def round(self, ids: np.ndarray, temperature: float) -> None:
        ids = [int(i) for i in ids]
        kept = self.model.batch([self.structures[i] for i in ids], [self.trajectories[i] for i in ids],
                                [self.labels[i] for i in ids], temperature)
        for i, s in zip(ids, kept):
            self.structures[i] = s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=("paper", "small"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write results here")
    args = p.parse_args()
    # The authors' model: absolute edge inputs and the squared error, whatever the preset uses.
    paper_model = {"edge_inputs": "absolute", "loss_delta": 0.0}
    cfg = C.Config.from_dict(C.merge(C.preset(args.preset), {"model": paper_model, "train": {
        "meta_batch_size": args.batch, "device": "cpu", "warmup_rounds": 0}}))
    tasks = max(args.batch, 256)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_dataset(Path(tmp), tasks, args.frames, 5)
        shard = ShardWorker(0, tmp, 0, tasks, cfg, "cpu")
        part = shard.trajectories.numpy(), shard.labels
    server = ParameterServer(cfg, 4, args.frames)
    weights = server.weights()
    reference = Reference(*part, cfg)
    times: dict[str, list[float]] = {"reference": [], "nri_ray": []}
    for r in range(args.warmup + args.repeats):  # alternate, so that both see the same minutes
        ids = sample_batch(0, r, tasks, args.batch)
        t = time.perf_counter()
        reference.round(ids, 1e-4)
        times["reference"].append(time.perf_counter() - t)
        t = time.perf_counter()
        weights, _ = server.apply(r, shard.step(weights, r, ids, 1e-4)[1])
        times["nri_ray"].append(time.perf_counter() - t)
        print(f"round {r}: reference {times['reference'][-1]:.3f} s, nri-ray {times['nri_ray'][-1]:.3f} s", flush=True)
    ref = statistics.median(times["reference"][args.warmup:])
    ours = statistics.median(times["nri_ray"][args.warmup:])
    result = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
              "batch": args.batch, "reference_seconds_per_round": ref, "nri_ray_seconds_per_round": ours,
              "speedup": ref / ours, "nri_ray_round_flops": round_flops(cfg, 5, args.frames, args.batch),
              "all_rounds": times}
    print(f"\nB = {args.batch}: reference round {ref:.3f} s, nri-ray round {ours:.3f} s (medians of {args.repeats}): "
          f"nri-ray {ref / ours:.2f}x faster")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
