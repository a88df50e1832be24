"""Load checkpoints the way evaluation does: ``python -m training.verify_checkpoints CKPT...``.

Each checkpoint's archive is checked (CRC-32 of every record), then it is loaded with
:func:`training.models.load_checkpoint` (weights into a model built from the stored config).
One line per checkpoint that fails (``PATH: problem``) on stdout; exit status 1 if any.
``python -m pipeline.verify`` runs this tool for the checkpoints of a workspace (the
``pipeline`` package itself never imports torch).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from parsers.errors import EXIT_FAILURE, EXIT_OK, ProductError, UserError, cli_entry
from training.models import load_checkpoint

PROG = "python -m training.verify_checkpoints"


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` does not load as an SSCNet checkpoint, or None when it does."""
    try:
        load_checkpoint(path, map_location="cpu")
    except ProductError as exc:
        return exc.problem
    except UserError as exc:
        return str(exc)
    return None


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.checkpoints:
        problem = checkpoint_problem(path)
        if problem:
            failed += 1
            print(f"{path}: {problem}")
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
