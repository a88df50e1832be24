"""Loopback HTTP servers (127.0.0.1 only) used by the offline demo and by the tests.

- :mod:`pipeline.servers.static`: a static file tree with Range, HEAD, Apache-style
  listings and fault injection (an imitation of the PSA / PDS archive web servers).
"""
