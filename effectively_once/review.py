"""The review questions' old module path, which notebook 07 imports: they live in ``course.review_questions``."""

from effectively_once.course.review_questions import (
    DEDUP_SPIKE,
    KAFKA_EOS_AND_POSTGRES,
    LAYERS,
    LAYERS_TABLE,
    OPEN_QUESTIONS,
    SUMMARY,
    Choice,
    MultipleChoice,
    OpenQuestion,
    Point,
)

__all__ = ["DEDUP_SPIKE", "KAFKA_EOS_AND_POSTGRES", "LAYERS", "LAYERS_TABLE", "OPEN_QUESTIONS", "SUMMARY", "Choice",
           "MultipleChoice", "OpenQuestion", "Point"]
