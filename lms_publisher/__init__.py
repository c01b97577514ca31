"""The LMS side: publish Open edX tracking events to the raw JetStream stream.

``rthub publish`` / backfill (:mod:`lms_publisher.publish`), ``rthub demo`` (:mod:`lms_publisher.demo`) and the
in-LMS event-tracking backend (:mod:`lms_publisher.backend`).
"""
