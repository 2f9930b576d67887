"""Worker of ``test_pytensor_ml.py`` for what needs a fresh process.

``save DIR``: build a decoy model first (so loop bodies intern ops under
other names), then the deployed models; estimate, save ``DIR/<model>.npz``
and print the inference output at one row as JSON. ``fingerprints``: print
the site fingerprints of models built first thing in the process.
``resume KIND CHECKPOINT OUT N``: build decoys, then model ``KIND`` (``mlp``
or ``rnn``), resume the checkpointed pass over its ``N`` batches, save the
statistics to ``OUT`` and print the batches counted before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytensor

sys.path.insert(0, str(Path(__file__).parent))

import ptml_models as models

import popstats

FAST = "FAST_COMPILE"


def fingerprints(model) -> list[str]:
    sites = popstats.export(model.y).sites
    return sorted("/".join([*(s.fingerprint for s in site.id.path),
                            site.id.fingerprint]) for site in sites)


def resume(kind: str, checkpoint: str, out: str, n: str) -> None:
    models.mlp("decoy"), models.rnn("decoy")
    model = models.mlp() if kind == "mlp" else models.rnn()
    before = popstats.load_state(checkpoint).n_batches
    batches = [{"X": x} for x in model.batches(n=int(n))]
    stats = popstats.estimate([model.X], model.y, batches, mode=FAST, progress=False,
                              checkpoint=checkpoint, checkpoint_every=1)
    stats.save(out)
    after = popstats.load_state(checkpoint).n_batches
    print(json.dumps({"counted_before": before, "counted_after": after}))


def main(argv: list[str]) -> None:
    if argv[0] == "fingerprints":
        print(json.dumps({"rnn": fingerprints(models.rnn()),
                          "nested": fingerprints(models.nested())}))
        return
    if argv[0] == "resume":
        resume(*argv[1:])
        return
    out = Path(argv[1])
    models.mlp("decoy"), models.rnn("decoy"), models.rnn("decoy2")
    result = {}
    for name, model in (("mlp", models.mlp()), ("rnn", models.rnn()),
                        ("nested", models.nested())):
        batches = model.batches(seed=3)
        stats = popstats.estimate([model.X], model.y, [{"X": x} for x in batches],
                                  mode=FAST)
        stats.save(out / f"{name}.npz")
        x1 = batches[0][:, :1] if name == "nested" else batches[0][:1]
        graph = popstats.rewrite(model.y, stats)
        y1 = pytensor.function([model.X], graph, mode=FAST)(x1)
        result[name] = {"x": x1.tolist(), "y": y1.tolist()}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
