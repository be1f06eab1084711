"""The house rules a reviewer would otherwise check by hand: every module small enough to hold in one's
head (DESIGN: each module one job, under 450 lines)."""

from __future__ import annotations

from pathlib import Path

import megastarid

MAX_LINES = 450


def test_no_module_over_the_line_limit() -> None:
    package = Path(megastarid.__file__).parent
    sizes = {path.relative_to(package): len(path.read_text().splitlines()) for path in package.rglob("*.py")}
    assert len(sizes) > 50  # the whole package was found
    too_big = {str(path): lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines: {too_big}"
