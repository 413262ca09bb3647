"""Runs the clearing house's API with uvicorn on a socket of its own (port 0: any free port)."""

import asyncio

from ..uvicorn_serving import Serving
from .app import create_app
from .service import HouseService


class HouseServer:
    def __init__(self, house: HouseService, admin_token: str, host: str = "127.0.0.1", port: int = 0,
                 max_body_bytes: int = 64 * 2**20) -> None:
        self.house = house
        self.app = create_app(house, admin_token, max_body_bytes)
        self._serving = Serving(host, port)

    @property
    def host(self) -> str:
        return self._serving.host

    @property
    def port(self) -> int:
        return self._serving.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> int:
        return await self._serving.start(self.app, h11_max_incomplete_event_size=16_384)

    async def wait(self) -> None:
        """Until uvicorn stops serving (it takes SIGINT / SIGTERM itself while it serves)."""
        if self._serving.task is not None:
            await asyncio.shield(self._serving.task)

    async def stop(self) -> None:
        await self._serving.stop()
