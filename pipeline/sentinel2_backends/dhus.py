"""``dhus`` backend: sentinelsat against an ESA DHuS hub whose URL the user gives.

sentinelsat 1.2.1 speaks only the DHuS protocol (Solr OpenSearch + OData v2 + HTTP Basic). The
Copernicus Open Access Hub it was written for closed in 2023 and sentinelsat cannot use the
Copernicus Data Space Ecosystem, so there is no default URL: name a DHuS mirror (national
collaborative ground segments, e.g. https://colhub-archive.met.no/) with ``--dhus-url``.

Search: ``SentinelAPI.query(area, date, platformname='Sentinel-2', producttype='S2MSI2A' |
'S2MSI1C', cloudcoverpercentage=(0, N))``. Download: sentinelsat's own ``Downloader``
(``.incomplete`` file + Range resume, MD5 check against the hub's OData ``Checksum``, then
rename; offline products trigger a long-term-archive retrieval and are reported as such).
The requests session is :func:`pipeline.fetch.make_session` (retries with backoff on connection
errors and 429/5xx). Credentials: ``DHUS_USERNAME``/``DHUS_PASSWORD`` or ~/.netrc for the hub.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from parsers.errors import UserError, one_line, reason
from pipeline.fetch import make_session, sha256_file
from pipeline.manifest import ManifestEntry
from pipeline.sentinel2_backends.common import (
    Failed,
    Fetched,
    Product,
    Query,
    SearchResult,
    credentials,
    fetch_in_parallel,
    unreachable,
)

_HINT = ("check --dhus-url and your network; the Copernicus Open Access Hub (scihub/apihub) "
         "closed in 2023: without a DHuS mirror use --backend stac or --backend cdse")


class DhusBackend:
    """Search and download through sentinelsat from a DHuS hub."""

    name = "dhus"
    service = "DHuS hub"

    def __init__(self, settings: Any, bands: tuple[str, ...]) -> None:
        if not settings.dhus_url:
            raise UserError(
                "dhus: name the hub with --dhus-url (or download_sentinel2.dhus_url), e.g. a "
                "national DHuS mirror; there is no default because the Copernicus Open Access "
                "Hub closed in 2023 (without a mirror: --backend stac; with a CDSE account: "
                "--backend cdse)"
            )
        self.settings = settings
        self.url = settings.dhus_url if settings.dhus_url.endswith("/") else settings.dhus_url + "/"
        self.service_url = self.url
        self._api: Any = None

    @property
    def api(self) -> Any:
        """The SentinelAPI, built on first use (so a bad URL fails before credentials)."""
        if self._api is None:
            from sentinelsat import SentinelAPI

            user, password = credentials(f"DHuS hub at {self.url}", "DHUS", self.url)
            s = self.settings
            show = sys.stderr.isatty() if s.progress is None else bool(s.progress)
            api = SentinelAPI(user, password, api_url=self.url, show_progressbars=show,
                              timeout=s.timeout)
            session = make_session(retries=s.retries, backoff=s.backoff,
                                   timeout=(min(10.0, s.timeout), s.timeout))
            session.auth = (user, password)
            session.headers["User-Agent"] = api.user_agent
            api.session = session
            api.page_size = min(s.page_size, 100)
            self._api = api
        return self._api

    def _error(self, exc: BaseException) -> UserError:
        from sentinelsat.exceptions import UnauthorizedError

        host = urlsplit(self.url).hostname
        if isinstance(exc, UnauthorizedError):
            return UserError(
                f"DHuS hub at {self.url} refused the credentials (HTTP 401): check "
                f"DHUS_USERNAME/DHUS_PASSWORD or the ~/.netrc entry for {host}"
            )
        if isinstance(exc, requests.RequestException):
            return unreachable("DHuS hub", self.url, exc, _HINT)
        msg = getattr(exc, "msg", None) or reason(exc)
        return UserError(f"DHuS hub at {self.url}: {one_line(msg)}")

    # ------------------------------------------------------------------ search
    def search(self, query: Query) -> SearchResult:
        from sentinelsat.exceptions import SentinelAPIError

        ptype = "S2MSI2A" if query.level == "L2A" else "S2MSI1C"
        try:
            found = self.api.query(
                area=query.wkt(),
                date=(f"{query.start}T00:00:00.000Z", f"{query.end}T23:59:59.999Z"),
                platformname="Sentinel-2", producttype=ptype,
                cloudcoverpercentage=(0, query.max_cloud),
                order_by="+beginposition",
            )
        except (SentinelAPIError, requests.RequestException) as exc:
            raise self._error(exc) from None
        return SearchResult([self._product(uid, props, query.level)
                             for uid, props in found.items()])

    def _product(self, uid: str, props: dict[str, Any], level: str) -> Product:
        begin = props.get("beginposition")
        title = str(props["title"])
        return Product(
            product_id=title, url=str(props.get("link") or ""), filename=f"{title}.zip",
            sensing_time=begin.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if begin else None,
            cloud_cover=props.get("cloudcoverpercentage"),
            processing_baseline=props.get("processingbaseline"),
            meta={"uuid": uid, "level": level},
        )

    def locate(self, entries: Sequence[ManifestEntry]) -> list[Product]:
        for e in entries:
            if "uuid" not in e.meta:
                raise UserError(f"lock entry {e.product_id}: no 'uuid' in meta (not a dhus lock)")
        return [Product.from_lock(e) for e in entries]

    # ------------------------------------------------------------------- fetch
    def fetch(
        self, products: Sequence[Product], out: Path,
        on_done: Callable[[Fetched | Failed], None] | None = None,
    ) -> list[Fetched | Failed]:
        from sentinelsat import Downloader
        from sentinelsat.exceptions import (
            InvalidChecksumError,
            LTAError,
            LTATriggered,
            SentinelAPIError,
            UnauthorizedError,
        )

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        s = self.settings
        downloader = Downloader(self.api, verify_checksum=True, max_attempts=1,
                                n_concurrent_dl=s.workers)

        def one(product: Product) -> Fetched | Failed:
            uid = product.meta["uuid"]
            last = ""
            for _attempt in range(s.retries + 1):
                try:
                    info = downloader.download(uid, str(out))
                except LTATriggered:
                    return Failed(product, "offline: retrieval from the long-term archive "
                                           "was requested", offline=True)
                except UnauthorizedError:
                    raise
                except InvalidChecksumError:
                    last = "MD5 of the download differs from the hub's checksum (file removed)"
                    continue
                except (LTAError, SentinelAPIError) as exc:
                    return Failed(product, f"{type(exc).__name__}: {reason(exc)}")
                except requests.RequestException as exc:  # dropped mid-body: resume
                    last = f"transfer failed ({reason(exc)})"
                    continue
                path = Path(info["path"])
                return Fetched(product, path, path.stat().st_size, sha256_file(path),
                               transferred=int(info.get("downloaded_bytes") or 0),
                               meta={"md5": str(info.get("md5", "")).lower(),
                                     "uuid": uid})
            return Failed(product, f"{last} after {s.retries + 1} attempts")

        return fetch_in_parallel(
            products, one, workers=s.workers, desc="dhus", unit="product",
            progress=s.progress, on_done=on_done,
            fatal=(UnauthorizedError, requests.RequestException), on_fatal=self._error,
        )
