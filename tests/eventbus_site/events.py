"""Sending the signals as edx-platform does (data built from the same attrs classes)."""

from datetime import UTC, datetime

from opaque_keys.edx.keys import CourseKey


def enrollment(username: str, course: str, user_id: int = 7, mode: str = "audit", active: bool = True):
    from openedx_events.learning.data import CourseData, CourseEnrollmentData, UserData, UserPersonalData

    return CourseEnrollmentData(
        user=UserData(
            id=user_id,
            is_active=True,
            pii=UserPersonalData(username=username, email=f"{username}@example.org", name=username.title()),
        ),
        course=CourseData(course_key=CourseKey.from_string(course), display_name="Demonstration Course"),
        mode=mode,
        is_active=active,
        creation_date=datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC),
    )


def enrollment_created(username: str, course: str, **kw):
    from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED

    return COURSE_ENROLLMENT_CREATED.send_event(enrollment=enrollment(username, course, **kw))


def unenrolled(username: str, course: str, **kw):
    from openedx_events.learning.signals import COURSE_UNENROLLMENT_COMPLETED

    return COURSE_UNENROLLMENT_COMPLETED.send_event(
        enrollment=enrollment(username, course, active=False, **kw)
    )
