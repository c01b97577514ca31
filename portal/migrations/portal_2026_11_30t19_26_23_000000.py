from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-30T19:26:23:000000"
VERSION = "1.38.0"
DESCRIPTION = "accounts that existed before e-mail verification: administrators and operator-managed are verified"


class Account(Table, tablename="portal_account", schema=None):
    pass


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def mark_trusted_accounts_verified():
        # The operator vouches for these; self-registered consumers confirm by mail (or reset their password).
        await Account.raw("UPDATE portal_account SET email_verified = {} WHERE is_admin = {} OR password_hash = {}",
                          True, True, "!disabled")

    manager.add_raw(mark_trusted_accounts_verified)
    return manager
