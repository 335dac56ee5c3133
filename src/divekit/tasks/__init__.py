"""The built-in tasks (classification, regression, language modelling, translation, object
detection, semantic segmentation, BERT's pretraining and fine-tuning tasks). Importing this
package registers them; see :mod:`divekit.engine.task` for what a task is and how to add one."""

from divekit.tasks.bert import (
    BertPretraining,
    QuestionAnswering,
    TextClassification,
    TokenClassification,
)
from divekit.tasks.classification import Classification
from divekit.tasks.detection import Detection
from divekit.tasks.language_model import LanguageModeling
from divekit.tasks.regression import Regression
from divekit.tasks.segmentation import Segmentation
from divekit.tasks.translation import Translation

__all__ = ["BertPretraining", "Classification", "Detection", "LanguageModeling",
           "QuestionAnswering", "Regression", "Segmentation", "TextClassification",
           "TokenClassification", "Translation"]
