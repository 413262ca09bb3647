"""One uvicorn server on a socket of its own inside the running event loop: the card-services
API and the clearing house serve alike."""

import asyncio
import socket
from typing import Any

import uvicorn

from .tasks import cancel_and_wait

STOP_WAIT_S = 6.0  # uvicorn's graceful shutdown (5 s) and a little more


class Serving:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, app: Any, **config: Any) -> int:
        """Listen (port 0: any free port) and serve ``app``; returns the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                     timeout_graceful_shutdown=5, **config))
        self.task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # bounded: up to 5 s for uvicorn to start listening
            if self._server.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # raises what stopped it
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self.task is not None:
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await asyncio.shield(self.task)
            except TimeoutError:
                await cancel_and_wait([self.task])
