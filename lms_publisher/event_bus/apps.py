"""Django app (optional): add ``lms_publisher.event_bus`` to INSTALLED_APPS for ``event_bus_dead_letters``."""

from django.apps import AppConfig


class EventBusConfig(AppConfig):
    name = "lms_publisher.event_bus"
    label = "rthub_event_bus"
