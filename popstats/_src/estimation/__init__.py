"""Stage 3, estimation: the estimation graph run over batches.

- :mod:`~popstats._src.estimation.pass_object` -- :class:`Estimation`, the
  pass object (``init`` / ``update`` / ``merge`` / ``finalize``, ``run``),
  and :class:`~popstats._src.estimation.pass_object.PassDriver`, the hook
  that runs its passes with ``upstream="population"``;
- :mod:`~popstats._src.estimation.plan` -- what an Estimation is built from;
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
- :mod:`~popstats._src.estimation.engines` -- where a pass computes and adds
  its batches (host, graph, JAX device), chosen once;
- :mod:`~popstats._src.estimation.passes` -- one run over batches;
  accumulation on the host (:mod:`~popstats._src.estimation.accumulate_host`),
  in the compiled graph (:mod:`~popstats._src.estimation.accumulate_graph`) and
  on a JAX device (:mod:`~popstats._src.estimation.accumulate_device`,
  :mod:`~popstats._src.estimation.device_pass`,
  :mod:`~popstats._src.estimation.device_function`), each checking a batch
  with :mod:`~popstats._src.estimation.checks`;
- :mod:`~popstats._src.estimation.spec` -- what a state is a state of;
  :mod:`~popstats._src.estimation.state` -- the state, its file,
  checkpoints and resume;
- :mod:`~popstats._src.estimation.combine` -- states checked, merged,
  finalized;
- :mod:`~popstats._src.estimation.upstream` -- ``upstream="population"`` as
  estimation sees it (the record of the passes);
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
