"""Text for the sequence chapters (9.1-9.3): tokens, vocabularies, statistics, n-gram models.

The datasets built on these (``timemachine``, ``wikitext-2``, ``text-file``, ``embedded-text``)
and the random / sequential minibatch samplers are in :mod:`divekit.data.text`.
"""

from divekit.text.corpus import ngram_frequencies, plot_zipf
from divekit.text.ngram import NGramLM
from divekit.text.tokenize import preprocess_timemachine, tokenize
from divekit.text.vocab import Vocab

__all__ = [
    "NGramLM", "Vocab", "ngram_frequencies", "plot_zipf", "preprocess_timemachine", "tokenize",
]
