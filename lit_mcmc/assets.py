"""Where local, read-only assets (datasets, weights) live.

Nothing is ever downloaded: code reads files from here or from paths given in configs. The default is the
``shared/`` folder beside the project checkout; ``LIT_MCMC_SHARED`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LIT_MCMC_SHARED"


def shared_dir() -> Path:
    """The shared asset folder (``$LIT_MCMC_SHARED`` or ``<checkout>/../shared``)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path inside the shared asset folder (it may not exist: callers check and explain)."""
    return shared_dir().joinpath(*parts)
