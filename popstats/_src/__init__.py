"""Private implementation modules of popstats; the public API is ``popstats``."""
