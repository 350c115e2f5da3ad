"""A real S3-compatible server (moto's server mode) on 127.0.0.1, and a TCP proxy in front of it
that injects transient network faults, for the object-storage tests.

The proxy does not know S3: it forwards bytes both ways and, while its budgets last,

- ``drop``: resets a new connection after its first bytes (a connection reset mid-request);
- ``corrupt``: changes one byte of a response that contains a marker (``b"ustar"``: a tar header,
  i.e. a shard; at most one byte per connection) and forwards the rest intact: a transfer that
  "succeeds" with wrong bytes, caught by the store's response checksum where botocore validates
  one, else only by the manifest's sha256.

Clients reach it through ``AWS_ENDPOINT_URL``, the way a user's endpoint is configured.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from typing import Iterator

from tests.trainkit import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rrg-test-key", "AWS_SECRET_ACCESS_KEY": "rrg-test-secret-7f3a9c",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_server(bucket: str = "rrg") -> Iterator[dict[str, str]]:
    """Start the server, create ``bucket``; yields the environment that points boto / s3fs at it
    (also set in this process's ``os.environ`` while the context lasts)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **CREDENTIALS}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class FaultProxy:
    """127.0.0.1:<port> -> ``target``; see the module docstring for the faults."""

    def __init__(self, target: tuple[str, int], drop: int = 0, corrupt: dict[bytes, int] | None = None):
        self.target = target
        self.drop_left = drop
        self.corrupt_left = dict(corrupt or {})
        self.dropped = 0
        self.corrupted: dict[bytes, int] = {m: 0 for m in self.corrupt_left}
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            drop = self.drop_left > 0
            if drop:
                self.drop_left -= 1
                self.dropped += 1
        if drop:
            try:
                client.recv(1024)  # the request has started...
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                client.close()  # ...and the connection is reset
            return
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        self._pump(server, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        corrupted = not response  # at most one changed byte per connection: one torn transfer
        try:
            while data := src.recv(65536):
                if not corrupted:
                    data, corrupted = self._maybe_corrupt(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _maybe_corrupt(self, data: bytes) -> tuple[bytes, bool]:
        with self._lock:
            for marker, left in self.corrupt_left.items():
                at = data.find(marker)
                if left > 0 and at >= 0:
                    self.corrupt_left[marker] -= 1
                    self.corrupted[marker] += 1
                    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:], True
        return data, False
