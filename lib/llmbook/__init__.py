"""llmbook: the library behind *Understand LLMs*, an executable book.

One module per idea (``llmbook.device``, ``llmbook.model``, ``llmbook.sampling`` ...).
Compute modules never import plotting or widget code; chapters import both.
"""

__version__ = "0.1.0"
