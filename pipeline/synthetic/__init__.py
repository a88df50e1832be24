"""Test and demo machinery, kept apart from the readers and stages that users call.

- :mod:`~pipeline.synthetic.pds3_products`: a generic PDS3 QUBE writer (label string plus
  ``ndarray.tobytes()``), every axis order, suffix plane and item type;
- :mod:`~pipeline.synthetic.virtis_products`: VIRTIS-M/-H raw, calibrated and geometry products;
- :mod:`~pipeline.synthetic.sentinel2_products`: SAFE folders/zips, band files, COGs;
- :mod:`~pipeline.synthetic.psa_archive`: a PSA-like archive tree with INDEX tables (the fake PSA);
- :mod:`~pipeline.synthetic.datasets`: download folders, manifests and tile files for the tests;
- :mod:`~pipeline.synthetic.servers`: loopback HTTP servers on 127.0.0.1 with fault injection
  (static files = the fake PSA web server, STAC API, CDSE, DHuS).

Only the tests, the benchmarks and :mod:`pipeline.demo` import this package.
"""
