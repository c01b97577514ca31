"""Tutor plugin ``rthub`` (entry point ``tutor.plugin.v1``): the LMS-side backend in Open edX, optionally the hub.

Only ``plugin.py`` imports ``tutor``; nothing in the LMS process imports this package.
"""
