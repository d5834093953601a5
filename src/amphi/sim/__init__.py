"""Internet-scale model of a night on a virtual clock (docs/simulate.md)."""
