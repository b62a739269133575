"""A quiet terminal: the lines torch and torchao print when imported, which users read as errors, are
dropped (mpq's CLI installs this unless --verbose). Each is matched by its logger and its text, so any
other warning of theirs still shows."""

from __future__ import annotations

import logging

KNOWN = (
    # torchao registers its enums as pytree constants, which torch >= 2.12 says is no longer needed
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    # torchao's optional CUDA kernels (.so) that do not load on a CPU build: nothing mpq uses
    ("torchao", "Failed to load "),
)


class _Known(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def quiet_known_warnings() -> None:
    """Drop the KNOWN lines from here on (idempotent)."""
    for name, text in KNOWN:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Known) and f.text == text for f in logger.filters):
            logger.addFilter(_Known(text))
