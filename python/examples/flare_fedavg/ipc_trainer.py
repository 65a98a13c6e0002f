"""A trainer written for FLARE's IPCAgent; only the import differs.

It answers each ``train`` task with ``2 * w + 1`` for every array ``w`` of the global model.
The link's names come from ``$SHMEX_SITE``/``$SHMEX_AGENT_ID`` (or the command line).
"""

from __future__ import annotations

import sys

# was: from nvflare.client.ipc.ipc_agent import IPCAgent
#      from nvflare.client.ipc.defs import AgentClosed, TaskResult
from shmex.flare import AgentClosed, IPCAgent, TaskResult


def main() -> None:
    """Serves tasks until the FLARE site says bye."""
    site = sys.argv[1] if len(sys.argv) > 1 else None
    agent = IPCAgent(
        flare_site_url="",
        flare_site_name=site,
        agent_id=None,
        workspace_dir="",
        flare_site_connection_timeout=120.0,  # the simulator takes a while to start
    )
    agent.start()
    while True:
        try:
            task = agent.get_task()
        except AgentClosed:
            break
        assert task is not None
        params = {name: 2 * w + 1 for name, w in task.data.items()}
        print(f"ipc trainer: {task.task_name} round {task.meta.get('current_round')}", flush=True)
        agent.submit_result(TaskResult(meta={"NUM_STEPS_CURRENT_ROUND": 1}, data=params))
    agent.stop()


if __name__ == "__main__":
    main()
