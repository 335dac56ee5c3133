"""Text for the sequence chapters (9.1-9.3): tokenization, vocabularies, corpus statistics.

The datasets built on these (``timemachine``, ``wikitext-2``, ``text-file``, ``embedded-text``)
and the random / sequential minibatch samplers are in :mod:`divekit.data.text`.
"""

from divekit.text.corpus import ngram_frequencies, plot_zipf
from divekit.text.tokenize import preprocess_timemachine, tokenize
from divekit.text.vocab import Vocab

__all__ = ["Vocab", "ngram_frequencies", "plot_zipf", "preprocess_timemachine", "tokenize"]
