"""The single ``hyperst`` logger.

Modules use ``logging.getLogger(__name__)``; their records reach this logger's one handler.
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("hyperst")

if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s [hyperst] %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
