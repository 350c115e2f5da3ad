"""torch.distributed rendezvous for Ray Train workers that listens on the node's address only.

Why: Ray Train's stock torch backend lets rank 0 create torch's TCP store with
``MASTER_ADDR``/``MASTER_PORT``, and the store's server listens on every interface
(``*:PORT``): an unauthenticated port reachable from the network.  Here rank 0 binds
the listening socket itself (127.0.0.1 in the embedded local cluster, the node's cluster
address with ``--address``) and hands the open socket to ``TCPStore(master_listen_fd=...)``.
gloo's own pair sockets follow ``GLOO_SOCKET_IFNAME`` (``lo`` locally, see
:func:`store_env`).
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Optional

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_LISTENER: Optional[socket.socket] = None  # kept open in rank 0's process for the store's lifetime


def store_env(address: Optional[str]) -> dict[str, str]:
    """Worker env for the local default: gloo's sockets on loopback too."""
    return {} if address else {"GLOO_SOCKET_IFNAME": "lo"}


def _open_listener(loopback: bool) -> tuple[str, int]:
    """In rank 0's process: bind the store's port on this node's address (or loopback)."""
    global _LISTENER
    import ray

    host = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if _LISTENER is not None:
        _LISTENER.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(512)
    _LISTENER = sock
    return host, sock.getsockname()[1]


def _init_process_group(backend: str, world_rank: int, world_size: int, host: str, port: int, timeout_s: int,
                        env: dict[str, str]) -> None:
    import torch.distributed as dist

    os.environ.update(env)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = host, str(port)
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store = dist.TCPStore(host, port, world_size, True, timeout, master_listen_fd=_LISTENER.fileno())
    else:
        store = dist.TCPStore(host, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _BoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: "BoundTorchConfig"):
        import ray

        backend = backend_config.backend or "gloo"
        host, port = worker_group.execute_single(0, _open_listener, loopback=backend_config.loopback)
        worker_group.execute(_set_torch_distributed_env_vars)
        futures = [worker_group.execute_single_async(i, _init_process_group, backend=backend, world_rank=i,
                                                     world_size=len(worker_group), host=host, port=port,
                                                     timeout_s=backend_config.timeout_s,
                                                     env=store_env(None if backend_config.loopback else "cluster"))
                   for i in range(len(worker_group))]
        ray.get(futures)


class BoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous listens on loopback (``loopback=True``) or the node's address."""

    def __init__(self, *args, loopback: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.loopback = loopback

    @property
    def backend_cls(self):
        return _BoundTorchBackend
