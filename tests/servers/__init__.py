"""Test-only loopback imitations of remote services (127.0.0.1, ephemeral ports).

- :mod:`tests.servers.cdse`: Copernicus Data Space OData v4 catalogue + token + download.
- :mod:`tests.servers.dhus`: an ESA DHuS hub as sentinelsat 1.2.1 talks to it.
- :mod:`tests.servers.products`: the synthetic SAFE zips they serve, and the shared HTTP bits.

Imitations the offline demo also needs live in :mod:`pipeline.servers` instead.
"""
