"""Small models and data shared by the tests."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

#: The shared real datasets (../shared/datasets beside the repository), where present.
SHARED = Path(
    os.environ.get("INCOP_SHARED_DATA", Path(__file__).parents[2] / "shared" / "datasets")
)


class TinyNet(nn.Module):
    """A user-defined model that is not in the registry."""

    def __init__(self, n_in=10, n_out=3):
        super().__init__()
        self.hidden = nn.Linear(n_in, 32)
        self.out = nn.Linear(32, n_out)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def blobs(n=384, seed=0, n_in=10, n_out=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_out, (n,), generator=g)
    centres = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(99)) * 2
    return centres[y] + torch.randn(n, n_in, generator=g), y


def wait_mid_level(folder: Path, level: int = 2, timeout: float = 300) -> None:
    """Return once the run writing ``folder`` has trained an epoch of ``level`` (mid-level,
    with earlier levels done): where the resume tests kill it."""
    from incop.engine.outputs import read_metrics

    metrics = folder / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and any(
            r["level"] == level and r["epoch"] >= 1 for r in read_metrics(metrics)
        ):
            return
        time.sleep(0.01)


def rewrite_state(run, state):
    """Save ``state`` as the run folder ``run``'s ``state.pt``, as incop itself would (its
    digest line, recorded in the manifest): how a test edits a saved state on purpose."""
    from incop.engine.folders import OwnedFolder
    from incop.engine.outputs import RUN_LAYOUT, state_bytes

    folder = OwnedFolder(run, RUN_LAYOUT, mode="resume", kind="run", marker="config.yaml")
    folder.open()
    try:
        folder.write_bytes("state.pt", state_bytes(state))
    finally:
        folder.close()


def torchrun(script: str, out: Path, ranks: int = 2) -> None:
    """Run the test script ``script`` (a file beside this one) on ``ranks`` CPU ranks under
    torchrun, one thread each, with ``out`` as its argument; fail with its last output."""
    import subprocess
    import sys

    path = Path(__file__).parent / script
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(ranks), str(path), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(path.parent)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def fresh_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (nothing imported yet); it prints one JSON object as
    its last line, returned."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])
