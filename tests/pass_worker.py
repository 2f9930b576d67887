"""A checkpointed estimation pass as a real process, to be killed and resumed.

Usage::

    python tests/pass_worker.py CONFIG_JSON

``CONFIG_JSON`` holds ``config`` (estimator, time, max_steps; see
``pass_models.py``), ``seed``, ``n`` (batches), ``every``
(``checkpoint_every``), ``checkpoint`` and ``out`` (paths). The worker
builds the pass, runs it over the batches with the checkpoint, and saves
the finalized statistics to ``out``. It prints ``batch i`` (flushed) when it
hands batch ``i`` to the pass, so that the test can kill it at a chosen
point (SIGKILL: no cleanup of any kind), possibly in the middle of writing
the checkpoint, and run it again to resume.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pass_models
import pytensor


def main() -> None:
    spec = json.loads(sys.argv[1])
    pytensor.config.floatX = "float64"
    run = pass_models.estimation(tuple(spec["config"]))
    batches = pass_models.make_batches(spec["seed"], spec["n"])

    def announced():
        for i, batch in enumerate(batches):
            print(f"batch {i}", flush=True)
            yield batch

    state = run.run(announced(), checkpoint=spec["checkpoint"],
                    checkpoint_every=spec["every"], progress=False)
    run.finalize(state).save(spec["out"])
    print("done", flush=True)


if __name__ == "__main__":
    main()
