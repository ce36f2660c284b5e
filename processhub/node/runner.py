"""What ``manage.py runhub`` runs: one node in its own OS process, until SIGTERM or SIGINT.

The runner owns the event loop, turns signals into a flag (the main coroutine
does the drain), serves metrics when asked, and exits cleanly. A node that ends
its own OS process because user code outlived its lease exits with status 70
(see lease.py): run ``runhub`` under a process manager (systemd, supervisord,
Kubernetes) that starts it again.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal

from ..conf import hub_settings
from ..runtime import install_runtime
from .node import Node

logger = logging.getLogger(__name__)


class NodeRunner:
    node_class = Node
    # The collector's thresholds in a runhub process (None: Python's defaults). A node holds one set of
    # long-lived objects per process; with the defaults, a full collection ran every time their number
    # grew by a quarter, and activating 50,000 processes spent 60% of its CPU walking them. A full
    # collection now waits for 100 young collections instead of 10 (the node still collects on its own
    # after mass passivation, see passivation.py).
    gc_thresholds: tuple[int, int, int] | None = (700, 10, 100)

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
        # Everything imported and built so far lives as long as the node: out of the collector's sight, so
        # that collections while thousands of activations start do not walk Django's objects each time.
        gc.freeze()
        if self.gc_thresholds is not None:
            gc.set_threshold(*self.gc_thresholds)
        await stop.wait()
        logger.info("processhub: node %s got a stop signal", node.name)
        await node.drain()
        await rt.transport.close()
