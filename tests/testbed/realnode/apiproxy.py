"""A TCP forwarder from the pod bridge's gateway address to the loopback-only API server.

The test bed runs no kube-proxy, so the `kubernetes` Service (10.96.0.1) leads nowhere, and the
API server listens on loopback only. A pod that must talk to the API server (the operator's own
Deployment from the Helm chart) is pointed here instead, through the standard in-cluster
variables KUBERNETES_SERVICE_HOST/PORT; TLS still ends at the API server, whose certificate
names this address. It runs as a test-bed component:

    python -m testbed.realnode.apiproxy LISTEN_HOST LISTEN_PORT TARGET_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


async def serve(listen_host: str, listen_port: int, target_port: int) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(forward, listen_host, listen_port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], int(argv[1]), int(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
