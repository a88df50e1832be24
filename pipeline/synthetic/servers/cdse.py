"""A Copernicus Data Space Ecosystem imitation: OData v4 catalogue, token and download.

Endpoints below the base URL ``http://127.0.0.1:PORT/``:

- ``POST auth/token``: OpenID token (``grant_type`` password or refresh_token,
  ``client_id=cdse-public``); bad credentials -> 401 ``invalid_grant``.
- ``GET odata/v1/Products?$filter=&$top=&$skip=&$orderby=&$expand=``: OData v4
  ``{"@odata.context", "value": [...], "@odata.nextLink"}``; honours the product type, cloud
  cover and sensing-time clauses of the filter. Product records have the shape of the real
  catalogue's (tests/data/realapi/cdse/eodag_cop_dataspace_search_odata.json): the same keys,
  ``Checksum`` a list of MD5 and BLAKE3 (the BLAKE3 digest is real when the ``blake3``
  package is installed), ``Attributes`` with ``processorVersion`` and no
  ``processingBaseline``, an absolute ``@odata.nextLink`` with ``$skip``.
- ``recorded`` pages (real replies) are served verbatim instead, their
  ``https://catalogue.dataspace.copernicus.eu/`` links pointed at this server: the first
  page for a search without ``$skip``, the page a ``@odata.nextLink`` names for its ``$skip``.
- ``GET download/odata/v1/Products(<Id>)/$value``: needs ``Authorization: Bearer <live
  token>`` (else 401), serves the zip with Range support.

Fault modes on the :class:`CdseHub` object: ``rate_limit`` (429 with Retry-After to the first N
downloads), ``fail_first`` (503 to the first N downloads), ``bad_checksum`` (uuid set whose
published MD5 is wrong), ``revoke_tokens()`` (every issued token stops working: imitates
expiry), ``search_fail`` (503 to the first N searches), ``token_lifetime`` seconds,
``revoke_after_downloads`` (tokens stop working after N downloads), ``empty_checksum``,
``deny_download`` (401 to every download), ``bad_blake3`` (uuid set whose published BLAKE3 is
wrong).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

from pipeline.synthetic.servers import QuietHandler
from pipeline.synthetic.servers.sentinel2_hub import FakeProduct, send, send_ranged, serve

USER, PASSWORD = "alice@example.org", "s3cret-pw"


@dataclass
class CdseHub:
    products: list[FakeProduct]
    user: str = USER
    password: str = PASSWORD
    token_lifetime: float = 600.0
    rate_limit: int = 0
    fail_first: int = 0
    search_fail: int = 0
    bad_checksum: set[str] = field(default_factory=set)
    bad_blake3: set[str] = field(default_factory=set)
    recorded: list[dict] = field(default_factory=list)  # real reply pages, served verbatim
    empty_checksum: bool = False
    revoke_after_downloads: int = 0  # revoke every token once this many bodies were served
    deny_download: bool = False  # every download answers 401 (an account without rights)
    served: int = 0
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, range
    auth_headers: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    _tokens: set[str] = field(default_factory=set)
    _refresh: set[str] = field(default_factory=set)
    _n: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def issue(self) -> dict:
        with self._lock:
            self._n += 1
            access, refresh = f"acc-{self._n}", f"ref-{self._n}"
            self._tokens.add(access)
            self._refresh.add(refresh)
        return {"access_token": access, "expires_in": self.token_lifetime,
                "refresh_token": refresh, "refresh_expires_in": 3600, "token_type": "Bearer"}

    def take(self, name: str) -> bool:
        with self._lock:
            n = getattr(self, name)
            if n > 0:
                setattr(self, name, n - 1)
                return True
            return False


REAL_HOST = "https://catalogue.dataspace.copernicus.eu/"


def _blake3_hex(data: bytes) -> str:
    """BLAKE3 of ``data`` (a fixed stand-in when the blake3 package is missing: the client
    then checks MD5 only)."""
    try:
        return importlib.import_module("blake3").blake3(data).hexdigest()
    except ImportError:
        return hashlib.sha256(b"no blake3 package" + data).hexdigest()


def _odata(p: FakeProduct, base: str, hub: CdseHub) -> dict:
    md5 = "0" * 32 if p.uuid in hub.bad_checksum else p.published_md5
    blake3 = "0" * 64 if p.uuid in hub.bad_blake3 else _blake3_hex(p.data)
    stamp = p.begin.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    checksum = [] if hub.empty_checksum else [
        {"Value": md5, "Algorithm": "MD5", "ChecksumDate": stamp},
        {"Value": blake3, "Algorithm": "BLAKE3", "ChecksumDate": stamp},
    ]
    w, s, e, n = p.bbox
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    product_type = "S2MSI2A" if p.level == "L2A" else "S2MSI1C"

    def attr(kind: str, name: str, value: object) -> dict:
        return {"@odata.type": f"#OData.CSC.{kind}Attribute", "Name": name, "Value": value,
                "ValueType": kind}

    return {
        "@odata.mediaContentType": "application/octet-stream",
        "Id": p.uuid,
        "Name": p.title + ".SAFE",
        "ContentType": "application/octet-stream",
        "ContentLength": len(p.data),
        "OriginDate": stamp,
        "PublicationDate": stamp,
        "ModificationDate": stamp,
        "Online": p.online,
        "EvictionDate": "9999-12-31T23:59:59.999999Z",
        "S3Path": f"/eodata/Sentinel-2/MSI/{p.level}/{p.begin:%Y/%m/%d}/{p.title}.SAFE",
        "Checksum": checksum,
        "ContentDate": {"Start": stamp, "End": stamp},
        "Footprint": f"geography'SRID=4326;POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))'",
        "GeoFootprint": {"type": "Polygon", "coordinates": [ring]},
        "Attributes": [
            attr("String", "origin", "ESA"),
            attr("Double", "cloudCover", p.cloud),
            attr("String", "processingLevel", product_type),
            attr("String", "processorVersion", p.baseline),
            attr("String", "platformShortName", "SENTINEL-2"),
            attr("String", "productType", product_type),
            attr("DateTimeOffset", "beginningDateTime", stamp),
            attr("DateTimeOffset", "endingDateTime", stamp),
        ],
        "Assets": [],
    }


def _recorded_page(hub: CdseHub, base: str, query: dict[str, str]) -> dict | None:
    """The recorded page a search asks for (by ``$skip``), links pointed at ``base``."""
    index = 0
    skip = query.get("$skip")
    if skip is not None:
        index = -1
        for i, page in enumerate(hub.recorded[:-1]):
            link = parse_qs(urlsplit(page.get("@odata.nextLink", "")).query)
            if link.get("$skip", [None])[-1] == skip:
                index = i + 1
    if not 0 <= index < len(hub.recorded):
        return None
    return json.loads(json.dumps(hub.recorded[index]).replace(REAL_HOST, base))


def _filter(products: list[FakeProduct], flt: str) -> list[FakeProduct]:
    ptype = re.search(r"Value eq '(S2MSI\w+)'", flt)
    cloud = re.search(r"cloudCover' and att/OData\.CSC\.DoubleAttribute/Value le ([\d.]+)", flt)
    start = re.search(r"ContentDate/Start gt (\S+?)Z", flt)
    end = re.search(r"ContentDate/Start lt (\S+?)Z", flt)
    if "Collection/Name eq 'SENTINEL-2'" not in flt or "OData.CSC.Intersects" not in flt:
        raise ValueError("filter lacks the collection or area clause")
    out = []
    for p in products:
        level = "L2A" if (ptype and ptype.group(1) == "S2MSI2A") else "L1C"
        iso = p.begin.strftime("%Y-%m-%dT%H:%M:%S.000")
        if ptype and p.level != level:
            continue
        if cloud and p.cloud > float(cloud.group(1)):
            continue
        if start and iso <= start.group(1):
            continue
        if end and iso >= end.group(1):
            continue
        out.append(p)
    return sorted(out, key=lambda p: (p.begin, p.uuid))


def _handler(hub: CdseHub):
    class Handler(QuietHandler):

        def do_POST(self) -> None:
            hub.log.append(("POST", self.path, None))
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlsplit(self.path).path != "/auth/token":
                send(self, 404, b"{}")
                return
            grant = form.get("grant_type")
            hub.grants.append(str(grant))
            ok = form.get("client_id") == "cdse-public" and (
                (grant == "password" and form.get("username") == hub.user
                 and form.get("password") == hub.password)
                or (grant == "refresh_token" and form.get("refresh_token") in hub._refresh))
            if not ok:
                body = {"error": "invalid_grant", "error_description": "Invalid user credentials"}
                send(self, 401, json.dumps(body).encode())
                return
            send(self, 200, json.dumps(hub.issue()).encode())

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            hub.log.append((self.command, self.path, self.headers.get("Range")))
            url = urlsplit(self.path)
            if url.path == "/odata/v1/Products":
                self._search(url.query)
                return
            m = re.fullmatch(r"/download/odata/v1/Products\(([0-9a-f-]+)\)/\$value", url.path)
            if not m:
                send(self, 404, b'{"detail": "Not Found"}')
                return
            auth = self.headers.get("Authorization", "")
            hub.auth_headers.append(auth)
            if hub.deny_download or not auth.startswith("Bearer ") or auth[7:] not in hub._tokens:
                send(self, 401, b'{"detail": "Expired signature!"}',
                     headers={"WWW-Authenticate": "Bearer"})
                return
            product = next((p for p in hub.products if p.uuid == m.group(1)), None)
            if product is None:
                send(self, 404, b'{"detail": "Not Found"}')
                return
            if hub.take("rate_limit"):
                send(self, 429, b'{"detail": "Too Many Requests"}', headers={"Retry-After": "0"})
                return
            if hub.take("fail_first"):
                send(self, 503, b'{"detail": "Service Unavailable"}')
                return
            send_ranged(self, product.data, {
                "Content-Disposition": f'attachment; filename="{product.title}.zip"'})
            with hub._lock:
                hub.served += 1
                if hub.served == hub.revoke_after_downloads:
                    hub._tokens.clear()

        def _search(self, query: str) -> None:
            if hub.take("search_fail"):
                send(self, 503, b'{"detail": "Service Unavailable"}')
                return
            q = {k: v[-1] for k, v in parse_qs(query).items()}
            if hub.recorded:
                page = _recorded_page(hub, self.base, q)
                if page is None:
                    send(self, 404, b'{"detail": "no such recorded page"}')
                else:
                    send(self, 200, json.dumps(page).encode())
                return
            try:
                hits = _filter(hub.products, q.get("$filter", ""))
            except ValueError as exc:
                send(self, 400, json.dumps({"detail": str(exc)}).encode())
                return
            top, skip = int(q.get("$top", 20)), int(q.get("$skip", 0))
            page = hits[skip: skip + top]
            body = {"@odata.context": "$metadata#Products(Attributes(),Assets())",
                    "value": [_odata(p, self.base, hub) for p in page]}
            if skip + top < len(hits):
                nq = [(k, v) for k, v in dict(q, **{"$skip": str(skip + top)}).items()
                      if k != "$expand"] + [("$expand", "Attributes"), ("$expand", "Assets")]
                body["@odata.nextLink"] = f"{self.base}odata/v1/Products?{urlencode(nq)}"
            send(self, 200, json.dumps(body).encode())

    return Handler


@contextlib.contextmanager
def serve_cdse(hub: CdseHub) -> Iterator[dict[str, str]]:
    """Serve ``hub``; yield the three URLs the cdse backend needs (params keys)."""
    with serve(_handler(hub)) as base:
        yield {
            "cdse_catalogue_url": base + "odata/v1",
            "cdse_download_url": base + "download/odata/v1",
            "cdse_token_url": base + "auth/token",
        }
