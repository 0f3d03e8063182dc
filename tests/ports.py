"""Free loopback ports for tests that start servers on fixed port blocks."""

import random
import socket

import pytest


def _free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_block(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports in 40000-48999.

    Free for both UDP and TCP; skips the test when none is found.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(40000, 49000 - count)
        if all(_free(p) for p in range(base, base + count)):
            return base
    pytest.skip("no free block of loopback ports in 40000-48999")
