"""Log output of the server: text for people, JSON lines for collectors.

The handler is attached to the ``natkit`` logger only, so libraries that log
through the root logger are not affected.
"""

import json
import logging
import sys
import time
from typing import TextIO

from natkit.server.config import LogFormat, LogLevel

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, RFC 3339), level, logger, msg."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: LogLevel, fmt: LogFormat, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send ``natkit.*`` records at ``level`` and above to ``stream`` (stderr).

    Replaces a handler installed by an earlier call; returns the new one.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.set_name("natkit-server")

    logger = logging.getLogger("natkit")
    for old in [h for h in logger.handlers if h.get_name() == "natkit-server"]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[level])
    return handler
