"""Turning archives into datasets: downloads, split, statistics, tiles, the DVC demo.

Every stage is ``python -m pipeline.<stage>`` with a ``main(argv) -> int``; settings come
from typed dataclasses loaded from ``params.yaml`` by :mod:`pipeline.params`. No torch here.
"""
