"""lsproxy: one Adobe Analytics Live Stream connection per suite, fanned out to many consumers."""

__version__ = "0.1.0"
