"""Scores: one file per score, each registered by name in SCORES. Importing this package registers them."""
from audit.scores.base import SCORES, Score, ScoreContext  # noqa: F401
from audit.scores import clip_score  # noqa: F401,E402

__all__ = ["SCORES", "Score", "ScoreContext"]
# the seed papers' filters
from audit.scores import negclip, normsim, vas, basic, laion, image_based, text_based, metaclip  # noqa: F401,E402
# classifiers of the stored image embedding (pools without images)
from audit.scores import embedding_classifiers, semdedup  # noqa: F401,E402
