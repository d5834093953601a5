"""The parts of Amphi that need one of its pip extras (pyproject.toml's optional dependencies):

    plots    matplotlib: amphi report, amphi loadtest --plot, amphi simulate --plot, the bench figures

A node never needs one. Where an extra is missing, ``MissingExtra`` says what to install; a
command checks before a long run starts, not when it is over.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType


class MissingExtra(ImportError):
    def __init__(self, extra: str, module: str, what: str) -> None:
        super().__init__(f"{what} needs {module}, from Amphi's {extra!r} extra: pip install 'amphi[{extra}]' "
                         "(in a source checkout, `make setup` installs it)")
        self.extra = extra


def need_plots(what: str) -> None:
    """Raises MissingExtra unless matplotlib can be imported."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra("plots", "matplotlib", what)


def pyplot(what: str) -> ModuleType:
    """matplotlib.pyplot, drawing to files (the Agg backend, no display)."""
    need_plots(what)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
