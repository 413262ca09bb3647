"""Runs the HTTP API inside the platform's event loop (uvicorn), beside the gateway."""

import asyncio
from typing import Any

from ..tasks import cancel_and_wait
from ..uvicorn_serving import Serving
from . import disburse, reconciler
from .app import create_app
from .context import ApiContext
from .http_protocol import JsonErrorH11Protocol


class ApiServer:
    def __init__(self, ctx: ApiContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self._serving = Serving(host, port)
        self._reconciler: asyncio.Task[None] | None = None
        self.app: Any = None

    @property
    def port(self) -> int:
        return self._serving.port

    async def start(self) -> int:
        """Listen (port 0: any free port); returns the port."""
        self.app = create_app(self.ctx)
        port = await self._serving.start(self.app, http=JsonErrorH11Protocol,
                                         h11_max_incomplete_event_size=self.ctx.settings.api.max_head_bytes)
        await disburse.resume_interrupted(self.app)  # runs a crash or a shutdown left unfinished
        self._reconciler = asyncio.get_running_loop().create_task(reconciler.run_forever(self.ctx))
        return port

    async def stop(self) -> None:
        if self._reconciler is not None:
            await cancel_and_wait([self._reconciler])
        if self.app is not None:
            await disburse.runs_of(self.app).close()  # before the pool closes under them
        await self._serving.stop()
