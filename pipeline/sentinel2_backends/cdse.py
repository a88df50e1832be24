"""``cdse`` backend: Copernicus Data Space Ecosystem OData search + token download of SAFE zips.

Search (no auth): ``GET {catalogue}/Products`` with the ``$filter`` of docs/downloads.md (cdse)
(collection, product type, cloud cover, area, sensing time), ``$orderby=ContentDate/Start``,
``$top`` and ``$expand=Attributes``, following ``@odata.nextLink``.

Download: ``GET {download}/Products(<Id>)/$value`` (the download host directly, since requests
drops ``Authorization`` on cross-host redirects) with ``Authorization: Bearer <token>``, through
:func:`pipeline.fetch.fetch_all` (at most 4 parallel transfers, Range resume, atomic rename,
sha256) plus checks against the product's ``Checksum`` list (``[{Value, Algorithm,
ChecksumDate}]``, as the real service publishes it): MD5 always, BLAKE3 too when the optional
``blake3`` package is installed (``pip install .[sentinel2]``). A product with ``Online:
false`` (deferred availability) is skipped with a warning naming it; the run goes on.
Tokens come from the CDSE identity service (``grant_type=password``, ``client_id=cdse-public``;
credentials from ``CDSE_USERNAME``/``CDSE_PASSWORD`` or ~/.netrc), live about 10 minutes and
are refreshed before they expire (refresh token first, then the password grant); a 401 from
the download service triggers one refresh and one retry. Credentials and tokens are never
logged or printed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

from parsers.errors import UserError, reason
from pipeline.fetch import FetchJob, fetch_all, make_session, part_path
from pipeline.manifest import ManifestEntry
from pipeline.sentinel2_backends.common import (
    Failed,
    Fetched,
    Product,
    Query,
    SearchResult,
    credentials,
    unreachable,
)

CLIENT_ID = "cdse-public"
REFRESH_MARGIN_S = 60.0
_HINT = "check the URL and your network (service status: https://dataspace.copernicus.eu)"


class TokenProvider:
    """Access tokens for the CDSE download service, refreshed before they expire."""

    def __init__(self, url: str, user: str, password: str, *, retries: int = 5,
                 backoff: float = 0.5, timeout: float = 60.0) -> None:
        self.url = url
        self._user = user
        self._password = password
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires = 0.0
        self._refresh: str | None = None
        self._refresh_expires = 0.0
        self.grants: list[str] = []  # grant types used, in order (for tests)

    def token(self, force: bool = False) -> str:
        """A valid access token; ``force`` replaces the current one (after a 401)."""
        with self._lock:
            now = time.monotonic()
            if force or self._access is None or now >= self._expires - REFRESH_MARGIN_S:
                if self._refresh and now < self._refresh_expires - 5:
                    if not self._grant({"grant_type": "refresh_token",
                                        "refresh_token": self._refresh}, fatal=False):
                        self._password_grant()
                else:
                    self._password_grant()
            assert self._access is not None
            return self._access

    def _password_grant(self) -> None:
        self._grant({"grant_type": "password", "username": self._user,
                     "password": self._password})

    def _grant(self, form: dict[str, str], fatal: bool = True) -> bool:
        form = {**form, "client_id": CLIENT_ID}
        for attempt in range(self._retries + 1):
            try:
                resp = requests.post(self.url, data=form, timeout=self._timeout)
            except requests.RequestException as exc:
                if attempt < self._retries:
                    time.sleep(self._backoff * 2 ** attempt)
                    continue
                raise unreachable("CDSE identity service", self.url, exc, _HINT) from None
            if resp.status_code in (429, 500, 502, 503, 504) and attempt < self._retries:
                time.sleep(_retry_after(resp, self._backoff * 2 ** attempt))
                continue
            break
        self.grants.append(form["grant_type"])
        if resp.status_code == 200:
            data = resp.json()
            now = time.monotonic()
            self._access = data["access_token"]
            self._expires = now + float(data.get("expires_in", 600))
            self._refresh = data.get("refresh_token")
            self._refresh_expires = now + float(data.get("refresh_expires_in", 0))
            return True
        if not fatal:
            return False
        if resp.status_code in (400, 401):
            raise UserError(
                f"CDSE identity service at {self.url} refused the credentials "
                f"(HTTP {resp.status_code}): check CDSE_USERNAME/CDSE_PASSWORD or the ~/.netrc "
                "entry for identity.dataspace.copernicus.eu (accounts with two-factor "
                "authentication are not supported)"
            )
        raise UserError(
            f"CDSE identity service at {self.url} answered HTTP {resp.status_code}; try later"
        )


def _retry_after(resp: requests.Response, default: float) -> float:
    try:
        return min(float(resp.headers.get("Retry-After", default)), 60.0)
    except ValueError:
        return default


class BearerAuth(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer`` from a :class:`TokenProvider`; on a 401 answer it gets
    a fresh token and sends the request once more."""

    def __init__(self, tokens: TokenProvider) -> None:
        self.tokens = tokens

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.tokens.token()}"
        r.register_hook("response", self._on_401)
        return r

    def _on_401(self, resp: requests.Response, **kwargs: Any) -> requests.Response:
        if resp.status_code != 401 or resp.request.headers.get("X-Token-Retry"):
            return resp
        resp.close()
        req = resp.request.copy()
        req.headers["Authorization"] = f"Bearer {self.tokens.token(force=True)}"
        req.headers["X-Token-Retry"] = "1"
        new = resp.connection.send(req, **kwargs)
        new.history.append(resp)
        new.request = req
        return new


def _blake3() -> Any:
    """The ``blake3`` constructor when the optional package is installed, else None."""
    try:
        return importlib.import_module("blake3").blake3
    except ImportError:
        return None


def check_checksums(path: Path, published: dict[str, str]) -> list[str]:
    """Check ``path`` against the published digests (lower-case algorithm -> hex): MD5
    always, BLAKE3 when the ``blake3`` package is installed; one read of the file. Returns
    the algorithms checked; ValueError naming the first that differs."""
    hashers: dict[str, Any] = {}
    if "md5" in published:
        hashers["md5"] = hashlib.md5(usedforsecurity=False)
    blake3 = _blake3()
    if "blake3" in published and blake3 is not None:
        hashers["blake3"] = blake3()
    if not hashers:
        return []
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            for h in hashers.values():
                h.update(block)
    for algo, h in hashers.items():
        if h.hexdigest() != published[algo].lower():
            raise ValueError(f"{algo.upper()} differs from the published value (got "
                             f"{h.hexdigest()[:12]}..., published {published[algo][:12]}...)")
    return list(hashers)


class CdseBackend:
    """Search the CDSE OData catalogue and download SAFE zips with a Bearer token."""

    name = "cdse"
    service = "CDSE"

    def __init__(self, settings: Any, bands: tuple[str, ...]) -> None:
        self.settings = settings
        self.catalogue = settings.cdse_catalogue_url.rstrip("/")
        self.download_base = settings.cdse_download_url.rstrip("/")
        self.token_url = settings.cdse_token_url
        self.service_url = self.catalogue
        self._session = make_session(retries=settings.retries, backoff=settings.backoff,
                                     timeout=(min(10.0, settings.timeout), settings.timeout))
        self.tokens: TokenProvider | None = None

    # ------------------------------------------------------------------ search
    def odata_filter(self, query: Query) -> str:
        ptype = "S2MSI2A" if query.level == "L2A" else "S2MSI1C"
        end = dt.date.fromisoformat(query.end) + dt.timedelta(days=1)
        return " and ".join([
            "Collection/Name eq 'SENTINEL-2'",
            "Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'productType' and "
            f"att/OData.CSC.StringAttribute/Value eq '{ptype}')",
            "Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and "
            f"att/OData.CSC.DoubleAttribute/Value le {query.max_cloud:.2f})",
            f"OData.CSC.Intersects(area=geography'SRID=4326;{query.wkt()}')",
            f"ContentDate/Start gt {query.start}T00:00:00.000Z",
            f"ContentDate/Start lt {end.isoformat()}T00:00:00.000Z",
        ])

    def search(self, query: Query) -> SearchResult:
        url: str | None = f"{self.catalogue}/Products"
        params: dict[str, Any] | None = {
            "$filter": self.odata_filter(query),
            "$orderby": "ContentDate/Start asc",
            "$top": min(self.settings.page_size, 1000),
            "$expand": "Attributes",
        }
        products: list[Product] = []
        seen: set[str] = set()
        while url:
            try:
                resp = self._session.get(url, params=params)
            except requests.RequestException as exc:
                raise unreachable("CDSE catalogue", self.catalogue, exc, _HINT) from None
            if resp.status_code != 200:
                raise UserError(
                    f"CDSE catalogue at {self.catalogue} answered HTTP {resp.status_code} to "
                    f"the product search ({resp.text[:120].strip()!r}); try later"
                )
            try:
                data = resp.json()
                values = data["value"]
            except (ValueError, KeyError):
                raise UserError(
                    f"CDSE catalogue at {self.catalogue}: the search answer is not OData JSON"
                ) from None
            products.extend(self._product(v) for v in values)
            url, params = data.get("@odata.nextLink"), None
            if not values or (url and url in seen):
                break
            seen.add(url or "")
        return SearchResult(products)

    def _product(self, v: dict[str, Any]) -> Product:
        attrs = {a.get("Name"): a.get("Value") for a in v.get("Attributes") or []}
        name = str(v["Name"])
        stem = name[:-5] if name.endswith(".SAFE") else name
        checksums = {str(c["Algorithm"]).lower(): str(c["Value"]).lower()
                     for c in v.get("Checksum") or [] if c.get("Value") and c.get("Algorithm")}
        # The real catalogue has no processingBaseline attribute: processorVersion, or the
        # N0500 part of the product name.
        pb = attrs.get("processingBaseline") or attrs.get("processorVersion")
        if pb is None:
            m = re.search(r"_N(\d{2})(\d{2})_", name)
            pb = f"{m.group(1)}.{m.group(2)}" if m else None
        size = v.get("ContentLength")
        return Product(
            product_id=stem, url=f"{self.download_base}/Products({v['Id']})/$value",
            filename=f"{stem}.zip", size=int(size) if size else None, checksums=checksums,
            sensing_time=(v.get("ContentDate") or {}).get("Start"),
            cloud_cover=attrs.get("cloudCover"),
            processing_baseline=(f"{float(pb):05.2f}" if isinstance(pb, (int, float))
                                 else pb),
            online=bool(v.get("Online", True)),
            meta={"uuid": v["Id"], "s3_path": v.get("S3Path"), "level": (
                "L2A" if attrs.get("productType") == "S2MSI2A" else
                "L1C" if attrs.get("productType") == "S2MSI1C" else None)},
        )

    def locate(self, entries: Sequence[ManifestEntry]) -> list[Product]:
        """The locked products, straight from the lock (URL, size, checksums)."""
        return [Product.from_lock(e) for e in entries]

    # ------------------------------------------------------------------- fetch
    def fetch(
        self, products: Sequence[Product], out: Path,
        on_done: Callable[[Fetched | Failed], None] | None = None,
    ) -> list[Fetched | Failed]:
        done: list[Fetched | Failed] = []

        def report(res: Fetched | Failed) -> None:
            done.append(res)
            if on_done is not None:
                on_done(res)

        online = []
        for p in products:
            if p.online:
                online.append(p)
            else:
                report(Failed(p, "offline at CDSE (deferred availability; OData cannot order "
                                 "it): choose another product or try later", ignorable=True))
        if not online:
            return done
        if self.tokens is None:
            user, password = credentials("CDSE", "CDSE", self.token_url)  # type: ignore[misc]
            s = self.settings
            self.tokens = TokenProvider(self.token_url, user, password, retries=s.retries,
                                        backoff=s.backoff, timeout=s.timeout)
        self.tokens.token()  # fail fast, with one line, on refused credentials
        session = make_session(retries=self.settings.retries, backoff=self.settings.backoff,
                               timeout=(min(10.0, self.settings.timeout), self.settings.timeout))
        session.auth = BearerAuth(self.tokens)
        out = Path(out)
        by_dest = {out / p.filename: p for p in online}
        sums = {part_path(d): p.checksums for d, p in by_dest.items()}

        def verify(part: Path) -> None:
            check_checksums(part, sums.get(Path(part)) or {})

        jobs = [FetchJob(p.url, d, expected_size=p.size,
                         expected_sha256=p.expected_sha256,
                         meta={"product_id": p.product_id}) for d, p in by_dest.items()]
        results = fetch_all(session, jobs, max_workers=self.settings.workers, verify=verify,
                            desc="cdse", progress=self.settings.progress)
        # A checksum mismatch may be a transfer fault: try those once more from scratch.
        again = [r.job for r in results
                 if not r.ok and r.job is not None and "verification" in (r.error or "")]
        if again:
            redo = {r.job.dest: r for r in fetch_all(
                session, again, max_workers=self.settings.workers, verify=verify,
                desc="cdse (retry)", progress=self.settings.progress) if r.job is not None}
            results = [redo.get(r.path, r) for r in results]
        for r in results:
            product = by_dest[Path(r.path)]
            if r.ok:
                report(Fetched(product, Path(r.path), r.size, r.sha256,
                               transferred=r.transferred, skipped=r.skipped))
            elif "HTTP 401" in (r.error or "") or "HTTP 403" in (r.error or ""):
                code = "401" if "HTTP 401" in (r.error or "") else "403"
                raise UserError(
                    f"CDSE download service at {self.download_base} refused the token "
                    f"(HTTP {code}) for {product.product_id}: check that the account in "
                    "CDSE_USERNAME (or ~/.netrc) may download, or try later"
                )
            else:
                report(Failed(product, reason(Exception(r.error or "failed"))))
        return done
