"""A progress bar on stderr (tqdm), or nothing when disabled or not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress(total: int, enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        yield _Silent()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar
