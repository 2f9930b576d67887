"""The version of popstats (read by setuptools without importing the package).

Stage: base (below every stage folder).
"""

__version__ = "0.1.0"
