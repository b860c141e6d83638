"""A real uvicorn server run in a thread of the test process, on a socket the test bound."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn


@contextlib.contextmanager
def serving(server: uvicorn.Server, sock: socket.socket, what: str = "the server"):
    """Run ``server`` on ``sock`` until the block ends; the block starts once it accepts (30 s deadline)."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{what} did not stop"
