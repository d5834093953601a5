"""Amphi: live-audio rooms that survive the surge."""

__version__ = "0.1.0"
