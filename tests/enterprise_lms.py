"""The LMS side of tests/test_lms_groups.py, in its own process (Django is set up once per process): migrate
edx-enterprise's models into SQLite, then act on stdin commands as the LMS would, one per line, answering "ok".

``customer NAME`` creates an enterprise customer (prints its uuid); ``user ID USERNAME EMAIL``; ``link UUID USER_ID``, ``unlink UUID USER_ID``
(edx-enterprise's own unlink_user: a soft delete), ``delete UUID USER_ID`` and ``retire USER_ID``."""

import os
import sys

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.enterprise_site.settings"  # not an inherited one

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.contrib.sites.models import Site  # noqa: E402
from django.core.management import call_command  # noqa: E402

from lms_publisher import groups  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0, interactive=False)
    from eventtracking import tracker
    from eventtracking.django.django_tracker import DjangoTracker

    tracker.register_tracker(DjangoTracker())  # the LMS's tracker: backends from EVENT_TRACKING_BACKENDS
    from enterprise.models import EnterpriseCustomer, EnterpriseCustomerUser

    site = Site.objects.get_current()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "customer":
            customer = EnterpriseCustomer.objects.create(name=words[1], slug=words[1], site=site)
            print(customer.uuid, flush=True)
            continue
        if words[0] == "user":
            user = User.objects.create(id=int(words[1]), username=words[2], email=words[3])
        elif words[0] == "link":
            EnterpriseCustomerUser.objects.link_user(
                EnterpriseCustomer.objects.get(uuid=words[1]), User.objects.get(id=int(words[2])).email
            )
        elif words[0] == "unlink":
            EnterpriseCustomerUser.objects.unlink_user(
                EnterpriseCustomer.objects.get(uuid=words[1]), User.objects.get(id=int(words[2])).email
            )
        elif words[0] == "delete":
            EnterpriseCustomerUser.all_objects.get(
                enterprise_customer__uuid=words[1], user_id=int(words[2])
            ).delete()
        elif words[0] == "retire":
            user = User.objects.get(id=int(words[1]))
            groups.user_retired(sender=None, user=user)
        print("ok", flush=True)


if __name__ == "__main__":
    main()
