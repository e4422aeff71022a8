"""Progress bars (tqdm) shared by extract, apply, verify and transfers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tqdm import tqdm

from deltaformat.environment import quiet as quiet_by_environment


@contextlib.contextmanager
def progress(total: int, desc: str, quiet: bool = False, unit: str = "param") -> Iterator[tqdm]:
    """A tqdm bar on stderr; silent when ``quiet``, PARAMDELTA_QUIET=1, or stderr is not a terminal and CI is set."""
    disable = quiet or quiet_by_environment()
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=disable, leave=False, file=sys.stderr) as bar:
        yield bar
