"""An Open edX event bus on NATS JetStream (openedx-events' EventBusProducer / EventBusConsumer).

In the LMS (and any service that uses the event bus) settings::

    EVENT_BUS_PRODUCER = "lms_publisher.event_bus.create_producer"
    EVENT_BUS_CONSUMER = "lms_publisher.event_bus.NatsEventConsumer"
    EVENT_BUS_NATS_URL = "nats://nats:4222"
    EVENT_BUS_NATS_CREDS = "/etc/rthub/event-bus.creds"   # operator mode; `rthub auth creds event-bus`

Other settings: :class:`lms_publisher.event_bus.config.BusSettings` (each field as ``EVENT_BUS_NATS_<FIELD>``).
Needs the ``openedx`` extra (``pip install 'rthub[openedx]'``). See docs/event-bus.md.
"""

from lms_publisher.event_bus.consumer import NatsEventConsumer
from lms_publisher.event_bus.producer import NatsEventProducer, create_producer

__all__ = ["NatsEventConsumer", "NatsEventProducer", "create_producer"]
