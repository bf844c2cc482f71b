"""Annotators: one file per annotator, registered by name in ANNOTATORS. Importing this package registers them."""
from audit.annotators.base import ANNOTATORS, Annotator, AnnotatorContext  # noqa: F401
from audit.annotators import caption  # noqa: F401,E402

__all__ = ["ANNOTATORS", "Annotator", "AnnotatorContext"]
from audit.annotators import faces  # noqa: F401,E402
from audit.annotators import zeroshot  # noqa: F401,E402
from audit.annotators import nsfw  # noqa: F401,E402
from audit.annotators import copyright  # noqa: F401,E402
from audit.annotators import domain  # noqa: F401,E402
