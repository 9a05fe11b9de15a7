"""Running the service: in the foreground (``cxrlab serve``, stops cleanly on Ctrl-C) or in a background
thread on loopback (tests, the load-test benchmark)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from cxrlab.errors import ConfigError
from cxrlab.serve.app import create_app
from cxrlab.serve.config import ServiceConfig
from cxrlab.serve.security import NoUploadDetailsFilter, require_token_rule


def _quiet_access_log() -> None:
    logging.getLogger("uvicorn.access").addFilter(NoUploadDetailsFilter())


def check_can_listen(host: str, port: int) -> None:
    """A :class:`ConfigError` naming host and port when the service could not listen there (checked before the
    models load, so a busy port fails at once with a sentence instead of uvicorn's log after start-up)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); is another service using it? choose "
                          "another --port") from None


def serve(config: ServiceConfig, *, log_level: str = "info") -> None:
    """Load the models and serve until Ctrl-C / SIGTERM (uvicorn then finishes requests and runs shutdown)."""
    require_token_rule(config.host, config.token(), config.token_env)
    check_can_listen(config.host, config.port)
    app = create_app(config)
    _quiet_access_log()
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                           server_header=False))
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn has already drained requests and run shutdown (result store removed); it re-raises the
        # signal afterwards, which is the normal way to stop, not an error.
        logging.getLogger("cxrlab.serve").info("service stopped")


@dataclass
class BackgroundServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                     token_env: str = "CXRLAB_SERVICE_TOKEN", timeout: float = 30.0) -> BackgroundServer:
    """Start uvicorn in a daemon thread (port 0: any free port) and wait until it accepts connections."""
    require_token_rule(host, token, token_env)
    _quiet_access_log()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False))
    thread = threading.Thread(target=server.run, name="cxrlab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"service did not start on {host}:{port} within {timeout:g} s (port in use?)")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()
    return BackgroundServer(server, thread, f"http://{host}:{bound[1]}")
