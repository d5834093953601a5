"""The edge tier: Varnish caches in front of the origins (docs/edge.md). Amphi renders their
configuration (``vcl.py``) and runs them (``varnish.py``); the caching is Varnish's own."""
