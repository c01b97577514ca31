"""Learner groups for administrators (the JSON API and the admin page), over :mod:`hub.core.groups`: the same
buckets ``rthub group`` writes. Every change is audited; consumers see a group's name and size only."""

from __future__ import annotations

import time
from typing import Any

from hub.core import groups as store
from portal.services.base import PortalError, ServiceBase
from portal.tables import Account

_SIZES_FOR_S = 10.0  # group sizes shown on integration pages are at most this old (a scan of the learners)


class GroupService(ServiceBase):
    _sizes: tuple[float, dict[str, int]] = (0.0, {})

    async def group_sizes(self) -> dict[str, int]:
        at, sizes = self._sizes
        if time.monotonic() - at > _SIZES_FOR_S:
            sizes = (await store.load_membership(await self.js())).sizes()
            self._sizes = (time.monotonic(), sizes)
        return sizes

    async def list_groups(self) -> list[dict[str, Any]]:
        js = await self.js()
        sizes = (await store.load_membership(js)).sizes()
        self._sizes = (time.monotonic(), sizes)
        return [
            {"name": g.name, "site": g.site, "description": g.description, "size": sizes.get(g.name, 0)}
            for g in await store.list_groups(js)
        ]

    async def group(self, name: str) -> dict[str, Any]:
        js = await self.js()
        group = await self._existing(js, name)
        members = [uid for site, uid in (await store.load_membership(js)).members(name) if site == group.site]
        return {
            "name": group.name,
            "site": group.site,
            "description": group.description,
            "size": len(members),
            "members": members,
        }

    async def _existing(self, js, name: str) -> store.Group:
        try:
            group = await store.get_group(js, name)
        except ValueError as exc:
            raise PortalError(str(exc), 400, {"name": str(exc)}) from None
        if group is None:
            raise PortalError(f"No group {name!r}.", 404)
        return group

    async def create_group(
        self, actor: Account, name: str, site: str, users: list[str] | str = (), description: str = ""
    ) -> dict[str, Any]:
        errors: dict[str, str] = {}
        try:
            store.check_group_name(name)
        except ValueError as exc:
            errors["name"] = str(exc)
        if site not in self.settings.sites:
            errors["site"] = f"Unknown site; configured sites: {', '.join(sorted(self.settings.sites))}."
        members = self._users(users, errors)
        if errors:
            raise PortalError("Invalid group.", 400, errors)
        js = await self.js()
        have = await store.get_group(js, name)
        if have is not None and have.site != site:
            raise PortalError(f"Group {name!r} exists on site {have.site!r}.", 409)
        group = store.Group(name=name, site=site, description=description[:500])
        await store.put_group(js, group)
        await store.change_members(js, group, add=members)
        self._sizes = (0.0, {})
        await self.audit(actor.email, "group.create", "", f"{name} on {site}, {len(members)} member(s)")
        return await self.group(name)

    def _users(self, users: list[str] | str, errors: dict[str, str]) -> list[str]:
        try:
            return store.parse_users([users] if isinstance(users, str) else users)
        except ValueError as exc:
            errors["users"] = str(exc)
            return []

    async def change_group(
        self, actor: Account, name: str, add: list[str] | str = (), remove: list[str] | str = ()
    ) -> dict[str, Any]:
        errors: dict[str, str] = {}
        added, removed = self._users(add, errors), self._users(remove, errors)
        if errors:
            raise PortalError("Invalid user ids.", 400, errors)
        js = await self.js()
        group = await self._existing(js, name)
        await store.change_members(js, group, add=added, remove=removed)
        self._sizes = (0.0, {})
        await self.audit(actor.email, "group.members", "", f"{name}: +{len(added)} -{len(removed)}")
        return await self.group(name)

    async def import_group(self, actor: Account, name: str, csv_text: str) -> dict[str, Any]:
        try:
            rows = store.parse_csv(csv_text)
        except ValueError as exc:
            raise PortalError(f"CSV: {exc}", 400, {"csv": str(exc)}) from None
        js = await self.js()
        group = await self._existing(js, name)
        identities = {uid: (u, e) for uid, u, e in rows if u or e}
        await store.change_members(js, group, add=[r[0] for r in rows], identities=identities)
        self._sizes = (0.0, {})
        await self.audit(actor.email, "group.import", "", f"{name}: {len(rows)} member(s) imported")
        return await self.group(name)

    async def delete_group(self, actor: Account, name: str) -> int:
        js = await self.js()
        await self._existing(js, name)
        n = await store.delete_group(js, name)
        self._sizes = (0.0, {})
        await self.audit(actor.email, "group.delete", "", f"{name} ({n} member(s))")
        return n

    async def retire_learner(self, actor: Account, site: str, user_id: str) -> bool:
        try:
            known = await store.retire_learner(await self.js(), site, user_id)
        except ValueError as exc:
            raise PortalError(str(exc), 400, {"user_id": str(exc)}) from None
        self._sizes = (0.0, {})
        await self.audit(
            actor.email, "learner.retire", "", f"a learner of {site}"
        )  # the id is not kept either
        return known
