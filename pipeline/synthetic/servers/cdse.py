"""A Copernicus Data Space Ecosystem imitation: OData v4 catalogue, token and download.

Endpoints below the base URL ``http://127.0.0.1:PORT/``:

- ``POST auth/token``: OpenID token (``grant_type`` password or refresh_token,
  ``client_id=cdse-public``); bad credentials -> 401 ``invalid_grant``.
- ``GET odata/v1/Products?$filter=&$top=&$skip=&$orderby=&$expand=``: OData v4
  ``{"@odata.context", "value": [...], "@odata.nextLink"}``; honours the product type, cloud
  cover and sensing-time clauses of the filter; ``Checksum`` is a list (MD5 + BLAKE3).
- ``GET download/odata/v1/Products(<Id>)/$value``: needs ``Authorization: Bearer <live
  token>`` (else 401), serves the zip with Range support.

Fault modes on the :class:`CdseHub` object: ``rate_limit`` (429 with Retry-After to the first N
downloads), ``fail_first`` (503 to the first N downloads), ``bad_checksum`` (uuid set whose
published MD5 is wrong), ``revoke_tokens()`` (every issued token stops working: imitates
expiry), ``search_fail`` (503 to the first N searches), ``token_lifetime`` seconds,
``revoke_after_downloads`` (tokens stop working after N downloads), ``empty_checksum``,
``deny_download`` (401 to every download).
"""

from __future__ import annotations

import contextlib
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


def _odata(p: FakeProduct, base: str, hub: CdseHub) -> dict:
    md5 = "0" * 32 if p.uuid in hub.bad_checksum else p.published_md5
    checksum = [] if hub.empty_checksum else [
        {"Value": md5, "Algorithm": "MD5", "ChecksumDate": "2023-08-05T14:00:00.000Z"},
        {"Value": "ab" * 32, "Algorithm": "BLAKE3", "ChecksumDate": "2023-08-05T14:00:00Z"},
    ]
    w, s, e, n = p.bbox
    return {
        "@odata.mediaContentType": "application/octet-stream",
        "Id": p.uuid,
        "Name": p.title + ".SAFE",
        "ContentType": "application/octet-stream",
        "ContentLength": len(p.data),
        "OriginDate": p.begin.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "PublicationDate": p.begin.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "Online": p.online,
        "S3Path": f"/eodata/Sentinel-2/MSI/{p.level}/{p.begin:%Y/%m/%d}/{p.title}.SAFE",
        "Checksum": checksum,
        "ContentDate": {"Start": p.begin.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "End": p.begin.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
        "Footprint": f"geography'SRID=4326;POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))'",
        "Attributes": [
            {"@odata.type": "#OData.CSC.StringAttribute", "Name": "productType",
             "Value": "S2MSI2A" if p.level == "L2A" else "S2MSI1C", "ValueType": "String"},
            {"@odata.type": "#OData.CSC.DoubleAttribute", "Name": "cloudCover",
             "Value": p.cloud, "ValueType": "Double"},
            {"@odata.type": "#OData.CSC.StringAttribute", "Name": "processingBaseline",
             "Value": p.baseline, "ValueType": "String"},
        ],
    }


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
            try:
                hits = _filter(hub.products, q.get("$filter", ""))
            except ValueError as exc:
                send(self, 400, json.dumps({"detail": str(exc)}).encode())
                return
            top, skip = int(q.get("$top", 20)), int(q.get("$skip", 0))
            page = hits[skip: skip + top]
            body = {"@odata.context": "$metadata#Products(Attributes())",
                    "value": [_odata(p, self.base, hub) for p in page]}
            if skip + top < len(hits):
                nq = dict(q, **{"$skip": str(skip + top)})
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
