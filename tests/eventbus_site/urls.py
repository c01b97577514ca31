"""One view that enrolls a learner the way edx-platform announces it: COURSE_ENROLLMENT_CREATED."""

from django.http import HttpResponse
from django.urls import path


def enroll(request):
    from tests.eventbus_site.events import enrollment_created

    enrollment_created(request.GET["user"], request.GET["course"])
    return HttpResponse("enrolled")


urlpatterns = [path("enroll", enroll)]
