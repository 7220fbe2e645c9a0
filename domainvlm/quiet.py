"""Normal output shows our progress bars and results, not other libraries' chatter.

transformers and peft print deprecation warnings meant for library authors and a bar for
every weight load; a user of the CLI can act on neither. `--verbose` keeps them.
"""

from __future__ import annotations

import os
import sys
import warnings

# A variable the user has set wins; worker processes we start inherit these.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def quiet_libraries() -> None:
    """Silence third-party deprecation warnings and weight-loading bars in this process and
    the processes it starts."""
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "transformers" in sys.modules:  # imported already: its settings were read then
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
