"""Private throwaway Redis servers for the authentication tests: requirepass, an ACL user, TLS, Sentinel.

Each server runs the installed ``redis-server`` on a free loopback port with its
config file, log and TLS files in a directory of its own; ``start()`` waits (at
most a few seconds) until it answers, ``stop()`` ends it (SIGTERM, then SIGKILL).
Nothing is skipped when a binary is missing: ``require()`` fails with what to install.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

START_TIMEOUT = 5.0


class ServerExited(AssertionError):
    """The server process ended while a test waited for it (a config error): no use waiting longer."""


def mask_config(text: str) -> str:
    """Server output with the passwords of echoed config lines (``>pw``, ``requirepass pw``, ...) blotted out."""
    text = re.sub(r"(?<=\s)>\S+", ">***", text)
    return re.sub(r"(?i)\b(requirepass|masterauth|auth-pass \S+)\s+\S+", r"\1 ***", text)


def require(binary: str, package: str) -> str:
    """The path of ``binary``, or an AssertionError that names the package to install."""
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} is not installed; the Redis authentication tests need it: "
                             f"apt-get install {package} (Debian/Ubuntu)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except ServerExited:
            raise
        except Exception as exc:  # noqa: BLE001 - a server that is still starting refuses, resets, or says LOADING
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


class RedisServer:
    """One ``redis-server`` (or ``--sentinel``) process with a config file in ``workdir``."""

    def __init__(self, name: str, workdir: Path, config: list[str], *, sentinel: bool = False,
                 admin: dict | None = None) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.sentinel = sentinel
        # Keyword arguments of a redis-py client that may do everything on this server (the tests' own look).
        self.admin = {"host": "127.0.0.1", "port": self.port, "socket_timeout": 2, "socket_connect_timeout": 2,
                      **(admin or {})}
        self.config = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", 'save ""', "appendonly no",
                       *config]
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.log = self.dir / "redis.log"
        self.popen: subprocess.Popen | None = None

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        binary = require("redis-server", "redis-server")
        self.conf.write_text("\n".join(self.config) + "\n")
        args = [binary, str(self.conf)] + (["--sentinel"] if self.sentinel else [])
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        try:
            wait_until(self._ready, timeout, f"{self.name} (redis-server on port {self.port}) to answer")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(mask_config(f"{exc}\n--- {self.log}:\n{self.output()[-3000:]}")) from None
        return self

    def _ready(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise ServerExited(f"{self.name} exited with status {self.popen.returncode}")
        return bool(self.client().ping())

    def client(self, **kwargs: Any):
        import redis

        return redis.Redis(**{**self.admin, **kwargs})

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(5)


# ------------------------------------------------------------------ the four kinds


def requirepass_server(workdir: Path, password: str) -> RedisServer:
    return RedisServer("requirepass", workdir, [f"requirepass {password}"],
                       admin={"password": password}).start()


def acl_server(workdir: Path, user: str, password: str, grant: str, admin_password: str,
               name: str = "acl", start: bool = True) -> RedisServer:
    """The default user off; ``user`` with only ``grant``; an ``admin`` user for the tests' checks (ACL LOG).

    With ``start=False`` the server is only configured (its port is chosen), so that a
    test can put the port into a cluster's URL and the cluster's prefix into ``config``.
    """
    server = RedisServer(name, workdir, [
        "user default off",
        f"user {user} on >{password} {grant}",
        f"user admin on >{admin_password} ~* &* +@all",
    ], admin={"username": "admin", "password": admin_password})
    return server.start() if start else server


def make_tls_files(workdir: Path) -> dict[str, Path]:
    """A CA, a server certificate (127.0.0.1 and localhost) and a client certificate, with ``openssl``."""
    openssl = require("openssl", "openssl")
    d = workdir / "tls"
    d.mkdir(parents=True, exist_ok=True)
    files = {n: d / n for n in ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], cwd=d, capture_output=True, timeout=20)
        if done.returncode:
            raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr.decode(errors='replace')}")

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=processhub test CA")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                     ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{who}.ext").write_text(ext)
        run("req", "-new", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN=processhub-{who}")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext")
    for path in files.values():
        os.chmod(path, 0o600)
    return files


def tls_server(workdir: Path, tls: dict[str, Path], password: str) -> RedisServer:
    """TLS only (no plain port), client certificates required, and a password, as managed services do."""
    server = RedisServer("tls", workdir, [f"requirepass {password}"], admin={
        "password": password, "ssl": True, "ssl_ca_certs": str(tls["ca.crt"]),
        "ssl_certfile": str(tls["client.crt"]), "ssl_keyfile": str(tls["client.key"])})
    port = server.port
    server.config = [line for line in server.config if not line.startswith("port ")] + [
        "port 0", f"tls-port {port}", f"tls-cert-file {tls['server.crt']}", f"tls-key-file {tls['server.key']}",
        f"tls-ca-cert-file {tls['ca.crt']}", "tls-auth-clients yes",
    ]
    return server.start()


def master_server(workdir: Path, password: str, name: str, replica_of: RedisServer | None = None) -> RedisServer:
    config = [f"requirepass {password}", f"masterauth {password}", "repl-diskless-sync-delay 0"]
    if replica_of is not None:
        config.append(f"replicaof 127.0.0.1 {replica_of.port}")
    return RedisServer(name, workdir, config, admin={"password": password}).start()


def sentinel_server(workdir: Path, master: RedisServer, master_name: str, master_password: str,
                    sentinel_password: str) -> RedisServer:
    """One sentinel (quorum 1) watching ``master``, with a password of its own."""
    return RedisServer("sentinel", workdir, [
        f"sentinel monitor {master_name} 127.0.0.1 {master.port} 1",
        f"sentinel auth-pass {master_name} {master_password}",
        f"sentinel down-after-milliseconds {master_name} 1000",
        f"sentinel failover-timeout {master_name} 5000",
        f"requirepass {sentinel_password}",
    ], sentinel=True, admin={"password": sentinel_password}).start()
