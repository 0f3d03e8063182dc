"""natkit: NAT traversal toolkit (STUN, TURN, RFC 5780, ICE) and server."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
