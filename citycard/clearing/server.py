"""Runs the clearing house's API with uvicorn on a socket of its own (port 0: any free port)."""

import asyncio
import socket

import uvicorn

from ..tasks import cancel_and_wait
from .app import create_app
from .service import HouseService


class HouseServer:
    def __init__(self, house: HouseService, admin_token: str, host: str = "127.0.0.1", port: int = 0,
                 max_body_bytes: int = 64 * 2**20) -> None:
        self.house = house
        self.host = host
        self.port = port
        self.app = create_app(house, admin_token, max_body_bytes)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, h11_max_incomplete_event_size=16_384)
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # bounded: up to 5 s for uvicorn to listen
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        return self.port

    async def wait(self) -> None:
        """Until uvicorn stops serving (it takes SIGINT / SIGTERM itself while it serves)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                async with asyncio.timeout(6):
                    await asyncio.shield(self._task)
            except TimeoutError:
                await cancel_and_wait([self._task])
