"""Analysis of NoiseTune results folders: load part files, summarise, plot, tabulate, report.

Deliberately independent of `tuner`, `trainables`, `search_spaces` and Ray, so it works on
any copied results folder (a laptop, CI, a bucket).
"""

from analysis.load import artefacts, load, query
from analysis.stats import summarize

__all__ = ["artefacts", "load", "query", "summarize"]
