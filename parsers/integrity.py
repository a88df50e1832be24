"""Is this output intact? Torch-free checks of the project's own file formats.

- :func:`checkpoint_archive_problem`: a checkpoint (``torch.save``'s zip format) is checked
  record by record against its CRC-32. ``torch.load`` does not check them: a flipped bit in a
  weight loads silently as another weight; a truncated file fails with a miniz message.
- :func:`tile_read_problem`: the one-line wording for a tile whose HDF5 chunk fails its
  fletcher32 checksum, shared by ``python -m pipeline.verify`` and the training data loader.

Used by ``pipeline.verify`` and by training before it resumes or loads a checkpoint. Like
:mod:`parsers.atomic`, this is infrastructure: it changes what is detected, never an output.
"""

from __future__ import annotations

import os
import zipfile

DAMAGED_TILE = ("its stored bytes fail the fletcher32 checksum (or do not decompress): the file "
                "is damaged; rebuild it with the tiles stage")


def tile_read_problem(index: int, exc: BaseException) -> str:
    """The one-line problem for tile ``index`` that HDF5 refused to read."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"tile {index}: {DAMAGED_TILE} (HDF5: {first})"


def checkpoint_archive_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with a checkpoint file as an archive, or None when every record of it
    passes its CRC-32 check and it holds a ``data.pkl`` (the pickled dict)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except FileNotFoundError:
        return "not found"
    except (zipfile.BadZipFile, EOFError):
        return "not a readable checkpoint: truncated, damaged or not a torch.save archive"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    except (zipfile.LargeZipFile, ValueError, NotImplementedError) as exc:
        return f"damaged archive ({exc})"
    if bad is not None:
        return f"damaged: record {bad} fails its CRC-32 check"
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "not a torch checkpoint (no data.pkl record)"
    return None
