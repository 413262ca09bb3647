"""Runs the HTTP API inside the platform's event loop (uvicorn), beside the gateway."""

import asyncio
import socket
from typing import Any

import uvicorn

from ..tasks import cancel_and_wait
from . import disburse, reconciler
from .app import create_app
from .context import ApiContext
from .http_protocol import JsonErrorH11Protocol


class ApiServer:
    def __init__(self, ctx: ApiContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self.app: Any = None

    async def start(self) -> int:
        """Listen (port 0: any free port); returns the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.app = create_app(self.ctx)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=5, http=JsonErrorH11Protocol,
                                h11_max_incomplete_event_size=self.ctx.settings.api.max_head_bytes)
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # bounded: up to 5 s for uvicorn to start listening
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        await disburse.resume_interrupted(self.app)  # runs a crash or a shutdown left unfinished
        self._reconciler = asyncio.get_running_loop().create_task(reconciler.run_forever(self.ctx))
        return self.port

    async def stop(self) -> None:
        if self._reconciler is not None:
            await cancel_and_wait([self._reconciler])
        if self.app is not None:
            await disburse.runs_of(self.app).close()  # before the pool closes under them
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                async with asyncio.timeout(6):
                    await asyncio.shield(self._task)
            except TimeoutError:
                await cancel_and_wait([self._task])
