"""A FLARE Client API trainer; only the import differs.

It answers each task with ``w + 3`` for every array ``w`` of the global model. ``init()``
finds its link from ``$SHMEX_SITE``/``$SHMEX_AGENT_ID``, which ``ShmexExchanger`` sets when it
starts this script (``train_command``).
"""

from __future__ import annotations

import shmex.flare.client as flare  # was: import nvflare.client as flare
from shmex.flare.client import FLModel  # FLARE's own FLModel when nvflare is installed


def main() -> None:
    """Trains until the FLARE site says bye."""
    flare.init()
    while flare.is_running():
        model = flare.receive()
        assert model is not None and model.params is not None
        params = {name: w + 3 for name, w in model.params.items()}
        print(f"client api trainer: round {model.current_round} of {model.total_rounds}")
        flare.send(
            FLModel(params=params, metrics={"loss": 0.0}, meta={"NUM_STEPS_CURRENT_ROUND": 1})
        )
    flare.shutdown()


if __name__ == "__main__":
    main()
