"""What ``manage.py runhub`` runs: one node in its own OS process, until SIGTERM or SIGINT.

The runner owns the event loop, turns signals into a flag (the main coroutine
does the drain), serves metrics when asked, and exits cleanly. A node that ends
its own OS process because user code outlived its lease exits with status 70
(see lease.py): run ``runhub`` under a process manager (systemd, supervisord,
Kubernetes) that starts it again.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from ..conf import hub_settings
from ..runtime import install_runtime
from .node import Node

logger = logging.getLogger(__name__)


class NodeRunner:
    node_class = Node

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Signal handlers only set a flag; the main coroutine does the drain.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        hs = hub_settings()
        if hs.METRICS_PORT:
            from ..metrics import start_http_server

            start_http_server(int(hs.METRICS_PORT), hs.METRICS_ADDR)
        rt = await install_runtime()
        node = self.node_class(rt, self.name)
        await node.start()
        await stop.wait()
        logger.info("processhub: node %s got a stop signal", node.name)
        await node.drain()
        await rt.transport.close()
