"""The gateway's listening socket: a TerminalProtocol per connection (server.py)."""

import asyncio

from ..tasks import cancel_and_wait
from .context import GatewayContext
from .server import TerminalProtocol


class Gateway:
    def __init__(self, ctx: GatewayContext, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # several gateway processes on one port (gateway.processes)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: TerminalProtocol(self.ctx), self.host, self.port, backlog=4096, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening, close every connection, and cancel and await the connections'
        tasks (authentications, parameter queries)."""
        if self._server is not None:
            self._server.close()
            for c in list(self.ctx.connections):
                c._close()
            await self._server.wait_closed()
        await cancel_and_wait(list(self.ctx.tasks))
