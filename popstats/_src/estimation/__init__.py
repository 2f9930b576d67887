"""Stage 3, estimation: the estimation graph run over batches.

- :mod:`~popstats._src.estimation.pass_object` -- :class:`Estimation`, the
  pass (``init`` / ``update`` / ``merge`` / ``finalize``, ``run``);
- :mod:`~popstats._src.estimation.one_call` -- :func:`estimate`, the one call;
- :mod:`~popstats._src.estimation.estimators` -- :class:`Estimator` and the
  estimators' host (NumPy) states;
- :mod:`~popstats._src.estimation.formulas` -- the estimators' formulas
  (update, merge, finalize, Bessel's correction), written once for NumPy,
  PyTensor and JAX;
- :mod:`~popstats._src.estimation.partners` -- which statistic an estimator
  pairs with (a variance's mean, a count);
- :mod:`~popstats._src.estimation.options` -- the pass's options, checked;
- :mod:`~popstats._src.estimation.batches` -- batches and inputs;
- :mod:`~popstats._src.estimation.passes` -- one run over batches;
  accumulation on the host (:mod:`~popstats._src.estimation.accumulate_host`),
  in the compiled graph (:mod:`~popstats._src.estimation.accumulate_graph`) and
  on a JAX device (:mod:`~popstats._src.estimation.accumulate_device`,
  :mod:`~popstats._src.estimation.device_pass`);
- :mod:`~popstats._src.estimation.state`,
  :mod:`~popstats._src.estimation.checkpoint` -- states, checkpoints, resume;
- :mod:`~popstats._src.estimation.statistics` -- the result,
  :class:`PopulationStatistics`, and its file;
  :mod:`~popstats._src.estimation.persistence` -- the ``.npz`` file layer;
- :mod:`~popstats._src.estimation.progress` -- the progress bar.

Re-exported: :obj:`Estimation`, :obj:`EstimationState`, :obj:`Estimator`,
:obj:`PopulationStatistics`, :obj:`Statistic`, :obj:`estimate`, :obj:`load`,
:obj:`load_state`.
"""

from popstats._src.estimation.estimators import Estimator
from popstats._src.estimation.one_call import estimate
from popstats._src.estimation.pass_object import Estimation
from popstats._src.estimation.state import EstimationState, load_state
from popstats._src.estimation.statistics import PopulationStatistics, Statistic, load

__all__ = [
    "Estimation",
    "EstimationState",
    "Estimator",
    "PopulationStatistics",
    "Statistic",
    "estimate",
    "load",
    "load_state",
]
