"""JSON logs on stderr, one object per line."""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "asctime": "time"},
            static_fields={"service": service},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"recmesh.{service}")
