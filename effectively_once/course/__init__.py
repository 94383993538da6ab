"""The course as content: its map (``map``), its review questions (``review_questions``), and how a lab's
failed check reads (``lab_checks``).

``effectively_once.course`` hands on the course map's names, as it did when the map was this module.
"""

from effectively_once.course.map import (
    COURSE,
    LAB,
    WORKSHOP_PLANS,
    Notebook,
    RoundTrip,
    WorkshopPlan,
    course_map_html,
    exercise_minutes,
    round_trip,
    total_minutes,
)

__all__ = ["COURSE", "LAB", "WORKSHOP_PLANS", "Notebook", "RoundTrip", "WorkshopPlan", "course_map_html",
           "exercise_minutes", "round_trip", "total_minutes"]
