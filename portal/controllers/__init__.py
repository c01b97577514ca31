"""The portal's routes by domain, each a Litestar controller (pages and JSON API side by side)."""

from portal.controllers.accounts import AccountApi, AccountPages
from portal.controllers.admin import AdminApi, AdminPages
from portal.controllers.catalog import CatalogApi, CatalogPages
from portal.controllers.integrations import IntegrationApi, IntegrationPages
from portal.controllers.ops import OpsApi, OpsPages, state_json
from portal.controllers.tokens import TokenPages

CONTROLLERS = [AccountPages, AccountApi, IntegrationPages, IntegrationApi, TokenPages, AdminPages, AdminApi, OpsPages,
               state_json, OpsApi, CatalogPages, CatalogApi]
