"""The reader command lines, kept apart from the readers (the readers never import them).

- :mod:`parsers.cli.pds3`: ``python -m parsers.pds3 FILE`` (any PDS3 QUBE);
- :mod:`parsers.cli.virtis`: ``python -m parsers.virtis FILE`` (VIRTIS quirks applied);
- :mod:`parsers.cli.sentinel2`: ``python -m parsers.sentinel2 PRODUCT``;
- :mod:`parsers.cli.qube`: the flags and outputs the QUBE commands share.

``python -m parsers.<reader>`` reaches these through the reader module's ``__main__`` block.
"""
