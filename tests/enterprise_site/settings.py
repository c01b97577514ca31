"""A plain Django project with edx-enterprise's own models (SQLite), standing in for the LMS in
tests/test_lms_groups.py: the apps edx-enterprise needs to migrate, the URL settings it reads, and the rthub
tracking backend with the learner group receivers."""

import os

SECRET_KEY = "rthub-test-only"
DEBUG = False
USE_TZ = True
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["RTHUB_TEST_DB"]}}
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sites", "django.contrib.sessions",
    "django.contrib.messages", "django.contrib.admin", "waffle", "enterprise", "consent",
    "integrated_channels.integrated_channel", "lms_publisher.groups.RthubGroupsConfig",
]
SITE_ID = 1
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# what edx-enterprise reads at import or migration time (any value will do here)
LMS_ROOT_URL = LMS_INTERNAL_ROOT_URL = "http://lms.example"
ENTERPRISE_CATALOG_INTERNAL_ROOT_URL = "http://catalog.example"
ENTERPRISE_API_URL = "http://lms.example/enterprise/api/v1"
LMS_ENROLLMENT_API_PATH = "/api/enrollment/v1/"
ECOMMERCE_PUBLIC_URL_ROOT = "http://ecommerce.example"
LICENSE_MANAGER_URL = "http://license.example"
ENTERPRISE_SUBSIDY_URL = "http://subsidy.example"
ENTERPRISE_ACCESS_INTERNAL_ROOT_URL = "http://access.example"
COURSE_CATALOG_API_URL = "http://discovery.example/api/v1"
ENTERPRISE_PUBLIC_ENROLLMENT_API_URL = "http://lms.example/api/enrollment/v1"
ENTERPRISE_ENROLLMENT_API_URL = "http://lms.example/api/enrollment/v1/"
OAUTH_ID_TOKEN_EXPIRATION = 3600
COURSE_CATALOG_URL_ROOT = "http://discovery.example"
EVENT_TRACKING_BACKENDS = {
    "rthub": {"ENGINE": "lms_publisher.backend.NatsBackend",
              "OPTIONS": {"nats_url": os.environ["RTHUB_TEST_NATS"], "spool_dir": os.environ["RTHUB_TEST_SPOOL"],
                          "site": os.environ["RTHUB_TEST_SITE"]}},
}
