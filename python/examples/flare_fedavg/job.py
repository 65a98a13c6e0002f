"""FedAvg, 2 clients x 2 rounds, in FLARE 2.9's simulator, each client's executor ShmexExchanger.

site-1's trainer (``ipc_trainer.py``, FLARE's IPCAgent API) is started by this script before
the simulator and waits for its link; site-2's (``client_api_trainer.py``, the Client API) is
started by its ShmexExchanger (``train_command``). The global model starts as
``[[1,2,3],[4,5,6],[7,8,9]]`` (NPModelPersistor's default); a round averages ``2w+1`` and
``w+3``, i.e. ``1.5w+2``, so after two rounds the model is ``2.25w+5``.

    python job.py --workspace /tmp/shmex-fedavg
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from nvflare.app_common.np.np_model_persistor import NPModelPersistor
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.job_config.api import FedJob

from shmex.flare import ShmexExchanger

HERE = Path(__file__).resolve().parent
AGENT_ID = "trainer"
"""The default agent id (the links are ``shmex.site-1.trainer`` and ``shmex.site-2.trainer``)."""
INITIAL = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)
EXPECTED = 2.25 * INITIAL + 5


def build_job(python: str, agent_id: str = AGENT_ID) -> FedJob:
    """The FedAvg job with a ShmexExchanger on each client."""
    job = FedJob(name="shmex_fedavg", min_clients=2)
    job.set_app_packages(["shmex"])  # import shmex as installed, do not copy it into custom/
    job.to(NPModelPersistor(), "server", id="persistor")
    job.to(FedAvg(num_clients=2, num_rounds=2, persistor_id="persistor"), "server")
    job.to(ShmexExchanger(agent_id=agent_id, agent_heartbeat_timeout=120.0), "site-1")
    trainer = [python, str(HERE / "client_api_trainer.py")]
    job.to(
        ShmexExchanger(agent_id=agent_id, agent_heartbeat_timeout=120.0, train_command=trainer),
        "site-2",
    )
    return job


def global_model(workspace: Path) -> np.ndarray:
    """The model the server saved (NPModelPersistor's ``models/server.npy``)."""
    found = sorted(workspace.rglob("models/server.npy"))
    if not found:
        raise FileNotFoundError(f"no models/server.npy under {workspace}")
    model: np.ndarray = np.load(found[-1])
    return model


def run(workspace: Path, python: str = sys.executable, agent_id: str = AGENT_ID) -> np.ndarray:
    """Runs the job in ``workspace`` and returns the saved global model."""
    local = workspace / "local"
    local.mkdir(parents=True, exist_ok=True)
    # ShmexExchanger is outside FLARE's default component allow-list.
    (local / "resources.json").write_text(json.dumps({"class_allow_list": ["nvflare.", "shmex."]}))
    env = dict(os.environ, SHMEX_SITE="site-1", SHMEX_AGENT_ID=agent_id)
    ipc_trainer = subprocess.Popen([python, str(HERE / "ipc_trainer.py")], env=env)
    try:
        build_job(python, agent_id).simulator_run(str(workspace), threads=2)
        ipc_trainer.wait(timeout=60)  # it leaves when site-1 says bye at END_RUN
    finally:
        if ipc_trainer.poll() is None:
            ipc_trainer.kill()
            ipc_trainer.wait()
    return global_model(workspace)


def main() -> None:
    """Runs the job and checks the global model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/shmex-fedavg", type=Path)
    parser.add_argument("--agent-id", default=AGENT_ID, help="the links' agent id")
    args = parser.parse_args()
    model = run(args.workspace, agent_id=args.agent_id)
    print("global model:", model.tolist())
    if not np.array_equal(model, EXPECTED):
        sys.exit(f"expected {EXPECTED.tolist()}")
    print("global model as expected")


if __name__ == "__main__":
    main()
