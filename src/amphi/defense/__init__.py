"""Defense: rate limits, proof of work, the surge-vs-attack detector (docs/defense.md)."""
