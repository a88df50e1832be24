"""``python -m parsers.virtis FILE``: summarise, inspect or export a VIRTIS product.

The flags are those of :mod:`parsers.cli.qube`; the cube is opened by
:func:`parsers.virtis.read`.
"""

from __future__ import annotations

from collections.abc import Sequence

from parsers import virtis
from parsers.cli.qube import run_cli
from parsers.errors import cli_entry

PROG = "python -m parsers.virtis"


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """``{PROG} FILE [--json] [--export OUT] [--band N --png OUT] [--spectrum L S]``."""
    return run_cli(argv, prog=PROG, opener=virtis.read)


if __name__ == "__main__":
    raise SystemExit(main())
