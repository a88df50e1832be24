"""An ESA DHuS hub imitation that sentinelsat 1.2.1 really talks to (docs/downloads.md).

Below the base URL ``http://127.0.0.1:PORT/`` (the ``api_url``), every request needs HTTP Basic
auth (else 401 + ``WWW-Authenticate``):

- ``GET api/stub/version`` -> ``{"value": "0.14.3-fake"}``
- ``GET search?format=json&rows=R&start=K&q=...`` -> ``{"feed": {"opensearch:totalResults": "N",
  "entry": ...}}``: a list, a bare dict for exactly one result, absent for none; honours the
  ``producttype``, ``cloudcoverpercentage`` and ``beginPosition`` terms of ``q``.
- ``GET odata/v1/Products('<uuid>')?$format=json`` -> OData v2 ``{"d": {...}}`` (ContentLength
  as a string, ``/Date(ms)/`` dates, ``Checksum`` object, GML footprint, ``Attributes``).
- ``GET …/Online/$value`` -> ``true``/``false``; ``GET …/Attributes('Filename')/Value/$value``.
- ``GET``/``HEAD …/$value``: the zip with ``Content-Disposition`` and Range support when online;
  **202** (retrieval accepted) when offline.
- unknown uuid -> 404 with ``cause-message: InvalidKeyException : Invalid key (<uuid>) …``.

Fault modes on :class:`DhusHub`: ``fail_first`` (503 to the first N downloads),
``rate_limit`` (429 + Retry-After to the first N downloads), ``bad_checksum`` (uuids whose
published MD5 is wrong), ``drop_after`` (uuid -> bytes: first GET is cut after that many).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from pipeline.synthetic.servers import QuietHandler
from pipeline.synthetic.servers.sentinel2_hub import FakeProduct, send, send_ranged, serve

USER, PASSWORD = "bob", "hub-pass"


@dataclass
class DhusHub:
    products: list[FakeProduct]
    user: str = USER
    password: str = PASSWORD
    fail_first: int = 0
    rate_limit: int = 0
    bad_checksum: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> bool:
        with self._lock:
            n = getattr(self, name)
            if n > 0:
                setattr(self, name, n - 1)
                return True
            return False

    def downloads(self, uuid: str | None = None) -> list[tuple[str, str, str | None]]:
        """Logged GET requests of product bodies (``$value``), optionally of one uuid."""
        return [r for r in self.log if r[0] == "GET" and r[1].split("?")[0].endswith(
            ")/$value") and "/Online/" not in r[1] and "Attributes(" not in r[1]
            and (uuid is None or f"'{uuid}'" in r[1])]


def _ms(d) -> str:
    return f"/Date({int(d.timestamp() * 1000)})/"


def _gml(p: FakeProduct) -> str:
    w, s, e, n = p.bbox
    coords = " ".join(f"{lat},{lon}" for lon, lat in ((w, s), (e, s), (e, n), (w, n), (w, s)))
    return ('<gml:Polygon srsName="http://www.opengis.net/gml/srs/epsg.xml#4326" '
            'xmlns:gml="http://www.opengis.net/gml"><gml:outerBoundaryIs><gml:LinearRing>'
            f"<gml:coordinates>{coords}</gml:coordinates></gml:LinearRing>"
            "</gml:outerBoundaryIs></gml:Polygon>")


def _entry(p: FakeProduct, base: str) -> dict:
    iso = p.begin.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {
        "title": p.title,
        "id": p.uuid,
        "link": [{"href": f"{base}odata/v1/Products('{p.uuid}')/$value"},
                 {"rel": "alternative", "href": f"{base}odata/v1/Products('{p.uuid}')/"},
                 {"rel": "icon", "href": f"{base}odata/v1/Products('{p.uuid}')/Products"
                                         "('Quicklook')/$value"}],
        "summary": f"Date: {iso}, Instrument: MSI, Satellite: Sentinel-2",
        "date": [{"name": "beginposition", "content": iso},
                 {"name": "endposition", "content": iso},
                 {"name": "ingestiondate", "content": iso}],
        "double": {"name": "cloudcoverpercentage", "content": str(p.cloud)},
        "str": [{"name": "uuid", "content": p.uuid},
                {"name": "producttype", "content": "S2MSI2A" if p.level == "L2A" else "S2MSI1C"},
                {"name": "platformname", "content": "Sentinel-2"},
                {"name": "processingbaseline", "content": p.baseline},
                {"name": "filename", "content": p.title + ".SAFE"},
                {"name": "size", "content": f"{len(p.data) / 1024:.2f} KB"}],
    }


def _matches(p: FakeProduct, q: str) -> bool:
    m = re.search(r'producttype:"?(\w+)"?', q)
    if m and m.group(1) != ("S2MSI2A" if p.level == "L2A" else "S2MSI1C"):
        return False
    m = re.search(r'cloudcoverpercentage:\["?([\d.]+)"? TO "?([\d.]+)"?\]', q)
    if m and not float(m.group(1)) <= p.cloud <= float(m.group(2)):
        return False
    m = re.search(r'beginPosition:\["?([^" ]+)"? TO "?([^" ]+)"?\]', q)
    if m:
        iso = p.begin.strftime("%Y-%m-%dT%H:%M:%S")
        if not m.group(1)[:19] <= iso <= m.group(2)[:19]:
            return False
    return True


def _handler(hub: DhusHub):
    expected = "Basic " + base64.b64encode(f"{hub.user}:{hub.password}".encode()).decode()

    class Handler(QuietHandler):

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            hub.log.append((self.command, self.path, self.headers.get("Range")))
            if self.headers.get("Authorization") != expected:
                send(self, 401, b"<html><body><h1>401 Unauthorized</h1></body></html>",
                     "text/html", {"WWW-Authenticate": 'Basic realm="OData service"'})
                return
            url = urlsplit(self.path)
            path = url.path
            if path == "/api/stub/version":
                send(self, 200, b'{"value": "0.14.3-fake"}')
                return
            if path == "/search":
                self._search(url.query)
                return
            m = re.fullmatch(r"/odata/v1/Products\('([^']+)'\)(.*)", path)
            if not m:
                send(self, 404, b"not found", "text/plain")
                return
            uid, rest = m.group(1), m.group(2)
            p = next((x for x in hub.products if x.uuid == uid), None)
            if p is None:
                send(self, 404, b"<error/>", "application/xml", {
                    "cause-message": f"InvalidKeyException : Invalid key ({uid}) to access "
                                     "Products"})
                return
            if rest == "":
                self._odata(p)
            elif rest == "/Online/$value":
                send(self, 200, b"true" if p.online else b"false", "text/plain")
            elif rest == "/Attributes('Filename')/Value/$value":
                send(self, 200, (p.title + ".SAFE").encode(), "text/plain")
            elif rest == "/$value":
                self._value(p)
            else:
                send(self, 404, b"not found", "text/plain")

        def _search(self, query: str) -> None:
            q = {k: v[-1] for k, v in parse_qs(query).items()}
            rows, start = int(q.get("rows", 10)), int(q.get("start", 0))
            hits = sorted((p for p in hub.products if _matches(p, q.get("q", ""))),
                          key=lambda p: (p.begin, p.uuid))
            page = [_entry(p, self.base) for p in hits[start: start + rows]]
            feed: dict = {"opensearch:totalResults": str(len(hits)),
                          "opensearch:startIndex": str(start),
                          "opensearch:itemsPerPage": str(rows)}
            if len(page) == 1:
                feed["entry"] = page[0]
            elif page:
                feed["entry"] = page
            send(self, 200, json.dumps({"feed": feed}).encode())

        def _odata(self, p: FakeProduct) -> None:
            md5 = "0" * 32 if p.uuid in hub.bad_checksum else p.published_md5
            d = {
                "__metadata": {
                    "id": f"{self.base}odata/v1/Products('{p.uuid}')",
                    "uri": f"{self.base}odata/v1/Products('{p.uuid}')",
                    "type": "DHuS.Product", "content_type": "application/octet-stream",
                    "media_src": f"{self.base}odata/v1/Products('{p.uuid}')/$value",
                },
                "Id": p.uuid, "Name": p.title, "ContentType": "application/octet-stream",
                "ContentLength": str(len(p.data)),
                "ChildrenNumber": "2", "Value": None,
                "CreationDate": _ms(p.begin), "IngestionDate": _ms(p.begin),
                "EvictionDate": None, "Online": p.online, "OnDemand": False,
                "ContentDate": {"__metadata": {"type": "DHuS.TimeRange"},
                                "Start": _ms(p.begin), "End": _ms(p.begin)},
                "Checksum": {"__metadata": {"type": "DHuS.Checksum"}, "Algorithm": "MD5",
                             "Value": md5.upper()},
                "ContentGeometry": _gml(p),
                "Attributes": {"__deferred": {
                    "uri": f"{self.base}odata/v1/Products('{p.uuid}')/Attributes"}},
            }
            send(self, 200, json.dumps({"d": d}).encode())

        def _value(self, p: FakeProduct) -> None:
            if not p.online:
                send(self, 202, b"", "text/plain")
                return
            if self.command == "GET" and hub.take("rate_limit"):
                send(self, 429, b"Too Many Requests", "text/plain", {"Retry-After": "0"})
                return
            if self.command == "GET" and hub.take("fail_first"):
                send(self, 503, b"<html><body>Service Unavailable</body></html>", "text/html")
                return
            headers = {"Content-Disposition": f'inline;filename="{p.title}.zip"'}
            cut = hub.drop_after.pop(p.uuid, None) if self.command == "GET" else None
            if cut is None:
                send_ranged(self, p.data, headers)
                return
            self.send_response(200)
            for k, v in {**headers, "Accept-Ranges": "bytes"}.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(p.data)))
            self.end_headers()
            self.wfile.write(p.data[:cut])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


@contextlib.contextmanager
def serve_dhus(hub: DhusHub) -> Iterator[str]:
    """Serve ``hub``; yield its api_url ``http://127.0.0.1:PORT/``."""
    with serve(_handler(hub)) as base:
        yield base
