"""Small collectives over the process group that move JSON (UTF-8 bytes), never pickles."""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able object on every rank (as UTF-8 bytes, no pickle)."""
    data = torch.tensor(list(json.dumps(obj).encode()) if dist.get_rank() == 0 else [], dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.long)
    dist.broadcast(size, src=0)
    if dist.get_rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return json.loads(bytes(data.tolist()).decode())


def gather_json(obj: Any) -> list[Any] | None:
    """Every rank's JSON-able object, as a list on rank 0 (None elsewhere); no pickle."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.long))
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    chunks = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(chunks, padded)
    if dist.get_rank() != 0:
        return None
    return [json.loads(bytes(c[: int(n)].tolist()).decode()) for c, n in zip(chunks, sizes)]
