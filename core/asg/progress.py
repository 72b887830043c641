"""Progress bars for long work (tqdm on stderr; quiet when ASG_PROGRESS=0)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Bar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update_to(self, n: int, total: int | None = None) -> None:
        """Move to ``n`` done (of ``total``, when the total is known only once work starts)."""
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(n - self._bar.n)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set(self, **fields: Any) -> None:
        """Show named values (phase, loss, reward) after the bar."""
        self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}, refresh=False)

    def write(self, text: str) -> None:
        self._bar.write(text)


@contextmanager
def progress_bar(total: int | None, desc: str) -> Iterator[_Bar]:
    from tqdm.auto import tqdm

    disable = os.environ.get("ASG_PROGRESS", "1") in ("0", "false", "False")
    bar = tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=True)
    try:
        yield _Bar(bar)
    finally:
        bar.close()
