"""The event catalog (:mod:`portal.catalog`): a page to pick event types from, and ``GET /api/v1/event-types``."""

from __future__ import annotations

from litestar import Request, get
from litestar.controller import Controller
from litestar.params import FromQuery
from litestar.response import Template

from portal import catalog
from portal.api_types import ERRORS
from portal.catalog import EventTypeView
from portal.guards import api_signed_in, signed_in
from portal.web import page


def _filtered(protocol: str | None) -> list[EventTypeView]:
    rows = catalog.catalog()
    return [r for r in rows if protocol in r.protocols] if protocol else list(rows)


class CatalogPages(Controller):
    guards = [signed_in]

    @get("/event-types")
    async def event_types(self, request: Request, protocol: FromQuery[str | None] = None) -> Template:
        return page(request, "event_types.html", rows=_filtered(protocol), protocol=protocol or "")


class CatalogApi(Controller):
    path = "/api/v1"
    tags = ["api"]
    guards = [api_signed_in]

    @get("/event-types", responses=ERRORS)
    async def event_types(self, protocol: FromQuery[str | None] = None) -> list[EventTypeView]:
        """Every event type the hub carries: name, description, protocols, an example payload per protocol
        (``protocol=xapi`` keeps those delivered in xAPI)."""
        return _filtered(protocol)
