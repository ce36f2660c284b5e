"""The other side of each measurement, run as its own OS process: ``python -m benchmarks.workers ROLE ...``.

Roles:

* ``rawecho IN OUT``: redis-py BLPOP on IN, RPUSH the same bytes to OUT (the round-trip yardstick);
* ``transportecho CHANNEL current|legacy``: processhub's RedisTransport (or the redis.asyncio one it replaced);
  echoes ``reply-channel|payload`` to the reply channel;
* ``layerecho core|pubsub CHANNEL``: a channels_redis layer with one persistent loop; echoes to ``msg["reply"]``;
* ``caster PID N``: a processhub client (Django set up from the environment) that casts N messages to PID
  after printing ``ready`` and reading ``go`` on stdin, then prints ``done``;
* ``starter FIRST COUNT CONCURRENCY``: likewise, ``astart()`` of act-FIRST ... with that many in flight;
* ``caller PREFIX COUNT RATE THREADS``: likewise, a steady ``call()`` load on PREFIX0 ... PREFIX{COUNT-1}
  (random ids, RATE calls/s in all, from THREADS threads) until ``stop`` on stdin, then prints one JSON
  list of ``[start, end, error]`` per call (``time.monotonic()``, error None or the exception's name).

Every role ends on a ``stop`` message or after ``--max-seconds``, whichever comes first.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

STOP = b"stop"


def rawecho(redis_url: str, key_in: str, key_out: str, max_seconds: float) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + max_seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        got = r.blpop([key_in], timeout=1)
        if got is None:
            continue
        if got[1] == STOP:
            break
        r.rpush(key_out, got[1])


def make_transport(kind: str, redis_url: str):
    if kind == "legacy":
        from .legacy_transport import RedisPyTransport

        return RedisPyTransport(redis_url)
    from processhub.transport.envelope import Keys
    from processhub.transport.redis import RedisTransport

    return RedisTransport(redis_url, Keys("benchmark-transport-echo"))


async def transportecho(redis_url: str, channel: str, kind: str, max_seconds: float) -> None:
    t = make_transport(kind, redis_url)
    await t.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_message(data: bytes) -> None:
        if data == STOP:
            done.set()
            return
        reply_to, _, payload = data.partition(b"|")
        loop.create_task(t.publish(reply_to.decode(), payload))

    await t.subscribe(channel, on_message)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), max_seconds)
    except TimeoutError:
        pass
    await t.close()


def make_layer(flavour: str, redis_url: str):
    if flavour == "pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=[redis_url])
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[redis_url])


async def layerecho(flavour: str, redis_url: str, channel: str, max_seconds: float) -> None:
    layer = make_layer(flavour, redis_url)
    deadline = time.monotonic() + max_seconds
    print("ready", flush=True)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            msg = await asyncio.wait_for(layer.receive(channel), min(left, 5.0))
        except TimeoutError:
            continue
        if msg.get("stop"):
            break
        await layer.send(msg["reply"], {"type": "bench.reply", "i": msg.get("i")})
    if hasattr(layer, "flush"):
        await layer.flush()


def caster(pid: str, n: int, max_seconds: float) -> None:
    import django

    django.setup()
    from benchmarks.processes import Bench

    Bench.call(pid, {"op": "stats"})  # warm: runtime, reply subscription, lookup cache
    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    if line != "go":
        return
    t0 = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    for i in range(n):
        Bench.cast(pid, i)
        if i % 1000 == 0 and time.monotonic() > deadline:
            break
    print(f"done {time.perf_counter() - t0:.6f}", flush=True)


def starter(first: int, count: int, concurrency: int, max_seconds: float) -> None:
    import django

    django.setup()
    from benchmarks.processes import Bench
    from processhub.runtime import get_runtime

    Bench.call(f"warm-{first}", {"op": "stats"})  # runtime, reply subscription, live nodes
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return

    async def go() -> None:
        it = iter(range(first, first + count))

        async def worker() -> None:
            for i in it:
                await Bench.astart(f"act-{i}", timeout=max_seconds)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))

    t0 = time.perf_counter()
    get_runtime().run_sync(go(), timeout=max_seconds)
    print(f"done {time.perf_counter() - t0:.6f}", flush=True)


def caller(prefix: str, count: int, rate: float, threads: int, max_seconds: float) -> None:
    import json
    import random
    import threading

    import django

    django.setup()
    from benchmarks.processes import Bench
    from processhub.exceptions import ProcessHubError

    Bench.call(f"{prefix}0", {"op": "stats"})  # runtime, reply subscription, live nodes
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    stop = threading.Event()
    records: list[list] = []
    gap = threads / rate

    def load(seed: int) -> None:
        rng = random.Random(seed)
        due = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                Bench.call(f"{prefix}{rng.randrange(count)}", 0)
                error = None
            except ProcessHubError as exc:
                error = type(exc).__name__
            records.append([t0, time.monotonic(), error])  # list.append is atomic under the GIL
            due = max(due + gap, time.monotonic() - gap)  # a slow call is not made up for by a burst
            stop.wait(max(0.0, due - time.monotonic()))

    pool = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    timer = threading.Timer(max_seconds, stop.set)
    timer.daemon = True
    timer.start()
    while not stop.is_set():
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            break
    stop.set()
    for t in pool:
        t.join(30)
    print(json.dumps(records), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.workers")
    p.add_argument("role", choices=["rawecho", "transportecho", "layerecho", "caster", "starter", "caller"])
    p.add_argument("args", nargs="*")
    p.add_argument("--max-seconds", type=float, default=600.0)
    ns = p.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if ns.role == "rawecho":
        rawecho(redis_url, ns.args[0], ns.args[1], ns.max_seconds)
    elif ns.role == "transportecho":
        asyncio.run(transportecho(redis_url, ns.args[0], ns.args[1], ns.max_seconds))
    elif ns.role == "layerecho":
        asyncio.run(layerecho(ns.args[0], redis_url, ns.args[1], ns.max_seconds))
    elif ns.role == "caster":
        caster(ns.args[0], int(ns.args[1]), ns.max_seconds)
    elif ns.role == "starter":
        starter(int(ns.args[0]), int(ns.args[1]), int(ns.args[2]), ns.max_seconds)
    else:
        caller(ns.args[0], int(ns.args[1]), float(ns.args[2]), int(ns.args[3]), ns.max_seconds)


if __name__ == "__main__":
    main()
