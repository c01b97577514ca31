"""NATS decentralized JWT auth (operator mode): trust chain, least-privilege users, scoped consumer access.

``AuthStore.ensure(data_dir)`` creates or loads the operator and accounts; ``server_config`` runs nats-server
in operator mode; ``service_creds``/``consumer_creds`` issue users; ``revoke`` cuts a user off live.
"""

from hub.auth.consumers import delete_consumer, ensure_consumer, example_nats_cli, example_subscriber
from hub.auth.permissions import consumer_inbox, service_inbox
from hub.auth.store import AuthError, AuthStore

__all__ = ["AuthStore", "AuthError", "ensure_consumer", "delete_consumer", "example_subscriber", "example_nats_cli",
           "consumer_inbox", "service_inbox"]
