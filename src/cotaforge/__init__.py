"""cotaforge: staged chain-of-thought question-answer corpora from labeled audio."""

__version__ = "0.1.0"
