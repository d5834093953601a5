from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a small bench that still takes 20-45 s (Varnish, nginx, Icecast2)")
