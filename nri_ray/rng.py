"""Counter-based random numbers: a pure function of (seed, task id, round, stream, index).

BounceGrad's random choices for a task in a round (which node to resample, the proposal draws,
the Metropolis uniform) must not depend on which shard holds the task or which other tasks share
its batch, so that 1 shard and 3 shards make the same decisions. A global generator cannot give
that; hashing the coordinates of each draw with SplitMix64 can, vectorized over tasks, on any
device, with no state to checkpoint.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch stores (two's complement)."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finalizer on int64 tensors (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def keys(seed: int, task_ids: torch.Tensor, round_idx: int, stream: int) -> torch.Tensor:
    """`[tasks]` int64 keys, one per task, for one (seed, round, stream)."""
    k = mix(torch.full_like(task_ids, _signed(seed & _MASK64)))
    k = mix(k ^ task_ids)
    k = mix(k ^ _signed(round_idx & _MASK64))
    return mix(k ^ _signed(stream & _MASK64))


def uniform(seed: int, task_ids: torch.Tensor, round_idx: int, stream: int, count: int) -> torch.Tensor:
    """`[tasks, count]` float64 uniforms in [0, 1)."""
    task_ids = task_ids.to(torch.int64)
    k = keys(seed, task_ids, round_idx, stream).unsqueeze(1)  # [tasks, 1]
    counters = torch.arange(count, device=task_ids.device, dtype=torch.int64) * _GOLDEN  # [count]
    bits = _shr(mix(k + counters), 11)  # [tasks, count], 53 random bits
    return bits.to(torch.float64) * (1.0 / (1 << 53))


def randint(seed: int, task_ids: torch.Tensor, round_idx: int, stream: int, count: int, high: int) -> torch.Tensor:
    """`[tasks, count]` int64 uniform in [0, high)."""
    u = uniform(seed, task_ids, round_idx, stream, count)
    return (u * high).long().clamp_(max=high - 1)


# Stream ids: one per kind of draw, so that draws never share counters.
INIT, NODE, EDGES, ACCEPT, UNIFORM_EDGE, UNIFORM_MODULE, BATCH = range(1, 8)  # training rounds
GUMBEL = 8  # the NRI baseline's Gumbel-softmax noise (keyed by seed, task, step)
NRI_SHUFFLE, NRI_VALID = 9, 10  # the NRI baseline's epoch order (keyed by seed, task, epoch) and validation samples
INFER_NODE, INFER_EDGES, INFER_ACCEPT = 101, 102, 103  # meta-test / meta-valid SA (keyed by seed, task, step)
STEP_STRIDE = 1000  # SA step s of a round uses stream + s * STEP_STRIDE
