"""Saving and loading population statistics and estimation states (``.npz``).

The format (version 2) is a NumPy ``.npz`` archive, read without pickle:

``popstats_format``
    ``"popstats.statistics"`` or ``"popstats.state"``.
``format_version``
    ``2`` for statistics (version 1 identified statistics by random
    per-build keys, which cannot be matched in another process: such files
    are refused), ``1`` for states (matched by statistic name).
``meta``
    JSON text: ``{"statistics": [...], "n_batches": int}`` with, per
    statistic, ``name``, ``label``, ``fingerprint`` (where it is computed,
    see ``identity.py``), ``path`` (the enclosing loops as ``[name,
    fingerprint]`` pairs, outermost first), ``key`` (informative only),
    ``shape``
    (static shape, ``null`` where unknown), ``dtype``, ``role``, ``group``,
    ``counted``, ``time`` (per loop: ``"step"`` or ``"pooled"``),
    ``estimator`` (``{"name": ..., "momentum": ..., "unbiased": ...}``;
    ``unbiased`` absent in older files, read as false) and ``n_batches``.
``value/<i>``, ``coverage/<i>``
    For statistics: the population value (float64, time axes first) and the
    batches per step.
``state/<i>/<field>``
    For states: the estimator's arrays of statistic ``i``.

Files are written to a temporary name in the same folder and renamed, so an
interrupted save never leaves a half-written file in place.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from typing import Any

import numpy as np

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimator import EstimationState
from popstats._src.estimators import Estimator
from popstats._src.exporter import Site
from popstats._src.statistics import PopulationStatistics, Statistic
from popstats._src.walk import LoopStep, SiteId

__all__ = [
    "FORMAT_VERSION",
    "check_target",
    "load",
    "load_state",
    "save_state",
    "save_statistics",
]

FORMAT_VERSION = 2  # of statistics files
_STATS, _STATE = "popstats.statistics", "popstats.state"
_VERSIONS = {_STATS: FORMAT_VERSION, _STATE: 1}
#: what reading a damaged or foreign file can raise (zipfile: NotImplementedError
#: for unknown flags, RuntimeError for "encrypted" members)
_UNREADABLE = (
    OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
    zlib.error, NotImplementedError, RuntimeError,
)


def _site_meta(site: Site, estimator: Estimator, n_batches: int) -> dict[str, Any]:
    return {
        "name": site.name,
        "label": site.label,
        "fingerprint": site.id.fingerprint,
        "path": [[step.name, step.fingerprint] for step in site.id.path],
        "key": site.id.key,
        "shape": list(site.shape),
        "dtype": site.dtype,
        "role": site.role,
        "group": site.group,
        "counted": site.counted,
        "time": list(site.time),
        "estimator": {"name": estimator.name, "momentum": estimator.momentum,
                      "unbiased": estimator.unbiased},
        "n_batches": n_batches,
    }


def _site_from_meta(meta: dict[str, Any]) -> tuple[Site, Estimator, int]:
    path = tuple(LoopStep(str(name), str(fp)) for name, fp in meta["path"])
    site_id = SiteId(path, str(meta["label"]), str(meta["fingerprint"]),
                     str(meta.get("key", "")))
    site = Site(
        meta["name"],
        meta["label"],
        site_id,
        tuple(None if s is None else int(s) for s in meta["shape"]),
        meta["dtype"],
        role=meta["role"],
        group=meta["group"],
        counted=bool(meta["counted"]),
        time=tuple(meta["time"]),
    )
    spec = meta["estimator"]
    estimator = Estimator(spec["name"], spec["momentum"],
                          unbiased=bool(spec.get("unbiased", False)))
    return site, estimator, int(meta["n_batches"])


def check_target(path: object, where: str, example: str = "stats.npz") -> str:
    """The path to write, or a PopstatsError naming what is wrong with it.

    ``where`` names the call and argument, e.g. ``"estimate(checkpoint=...)"``.
    """
    if not isinstance(path, str | os.PathLike):
        raise PopstatsError(
            f"{where}: expected a file path, got {describe_value(path)}."
        )
    path = os.fspath(path)
    if os.path.isdir(path):
        raise PopstatsError(
            f"{where}: {path!r} is a folder. Give a file path in it, e.g. "
            f"{os.path.join(path, example)!r}."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PopstatsError(
            f"{where}: cannot write {path!r}: its folder {folder!r} does "
            f"not exist. Create it first (os.makedirs(folder, exist_ok=True))."
        )
    return path


def _write(
    path: str | os.PathLike, kind: str, meta: dict, arrays: dict, where: str
) -> None:
    path = check_target(path, where)
    folder = os.path.dirname(os.path.abspath(path))
    payload = {
        "popstats_format": np.array(kind),
        "format_version": np.array(_VERSIONS[kind]),
        "meta": np.array(json.dumps(meta)),
        **arrays,
    }
    try:
        fd, tmp = tempfile.mkstemp(prefix=".popstats-", suffix=".npz", dir=folder)
    except OSError as exc:
        raise PopstatsError(
            f"{where}: cannot write {path!r}: {exc.strerror or exc} in "
            f"its folder {folder!r}. Choose a folder you can write to."
        ) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise PopstatsError(
                f"{where}: cannot write {path!r}: {exc.strerror or exc}. Choose "
                f"another name or folder (check its free space and permissions)."
            ) from exc
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_statistics(
    stats: PopulationStatistics,
    path: str | os.PathLike,
    where: str = "PopulationStatistics.save(path=...)",
) -> None:
    """Write ``stats`` to ``path`` (format above)."""
    metas, arrays = [], {}
    for i, stat in enumerate(stats.values()):
        metas.append(_site_meta(stat.site, stat.estimator, stat.n_batches))
        arrays[f"value/{i}"] = np.asarray(stat.value, dtype=np.float64)
        arrays[f"coverage/{i}"] = np.asarray(stat.coverage, dtype=np.int64)
    _write(path, _STATS, {"statistics": metas}, arrays, where)


def save_state(
    state: EstimationState,
    path: str | os.PathLike,
    where: str = "EstimationState.save(path=...)",
) -> None:
    """Write an estimation state to ``path`` (format above)."""
    arrays = {
        f"state/{i}/{field}": array
        for i, fields in enumerate(state.states)
        for field, array in fields.items()
    }
    meta = {"names": list(state.names), "n_batches": state.n_batches}
    _write(path, _STATE, meta, arrays, where)


def _read(
    path: str | os.PathLike, kind: str, call: str
) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and all arrays of a file (read at once, file closed)."""
    if not isinstance(path, str | os.PathLike):
        raise PopstatsError(
            f"{call}(path=...): expected a file path, got {describe_value(path)}."
        )
    if not os.path.isfile(path):
        raise PopstatsError(
            f"{call}(path=...): no file at {os.fspath(path)!r}. Check the path "
            f"(files are written by PopulationStatistics.save / "
            f"EstimationState.save)."
        )
    try:
        # our own handle: np.load leaves it open when the archive is damaged
        with open(path, "rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with archive:
                arrays = {key: archive[key] for key in archive.files}
        fmt = str(arrays["popstats_format"])
        version = int(arrays["format_version"])
    except _UNREADABLE as exc:
        raise PopstatsError(
            f"{call}(path=...): {os.fspath(path)!r} is not a popstats file or is "
            f"corrupted ({type(exc).__name__}: {exc}). Save it again."
        ) from None
    wanted = _VERSIONS.get(fmt)
    if fmt == _STATS and version == 1:
        raise PopstatsError(
            f"{call}(path=...): {os.fspath(path)!r} has format version 1, which "
            f"identified statistics by keys that are new in every process, so its "
            f"values cannot be matched with a graph built here. Estimate again "
            f"and save (this popstats writes version {wanted})."
        )
    if wanted is not None and version != wanted:
        raise PopstatsError(
            f"{call}(path=...): {os.fspath(path)!r} has format version {version}; "
            f"this popstats reads version {wanted}. Use the popstats "
            f"release that wrote it, or estimate again."
        )
    if fmt != kind:
        raise PopstatsError(
            f"{call}(path=...): {os.fspath(path)!r} holds {fmt!r}, not {kind!r}. "
            f"Use popstats.load for statistics and popstats.load_state for "
            f"estimation states."
        )
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError) as exc:
        raise PopstatsError(
            f"{call}(path=...): {os.fspath(path)!r} is corrupted (its metadata "
            f"cannot be read: {exc}). Save it again."
        ) from None
    return meta, arrays


def load(path: str | os.PathLike) -> PopulationStatistics:
    """Load population statistics saved by :meth:`PopulationStatistics.save`.

    Examples
    --------
    >>> import os, tempfile, numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}])
    >>> path = os.path.join(tempfile.mkdtemp(), "stats.npz")
    >>> stats.save(path)
    >>> popstats.load(path)["mean"].value
    array([1., 1.])
    """
    meta, archive = _read(path, _STATS, "load")
    stats = []
    try:
        for i, entry in enumerate(meta["statistics"]):
            site, estimator, n_batches = _site_from_meta(entry)
            value = np.array(archive[f"value/{i}"], dtype=np.float64)
            coverage = np.array(archive[f"coverage/{i}"], dtype=np.int64)
            if coverage.shape != value.shape[: site.time_axes]:
                raise ValueError(f"coverage of {site.name!r} does not fit its value")
            stats.append(
                Statistic(site.name, site.label, site, value, coverage, n_batches,
                          estimator)
            )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise PopstatsError(
            f"load(path=...): {os.fspath(path)!r} is corrupted ({type(exc).__name__}: "
            f"{exc}). Save it again."
        ) from None
    return PopulationStatistics(tuple(stats))


def load_state(path: str | os.PathLike) -> EstimationState:
    """Load an estimation state saved by :meth:`EstimationState.save`."""
    meta, archive = _read(path, _STATE, "load_state")
    try:
        names = tuple(str(n) for n in meta["names"])
        states: list[dict[str, np.ndarray]] = [{} for _ in names]
        for key, array in archive.items():
            if key.startswith("state/"):
                _, index, field = key.split("/")
                states[int(index)][field] = array
        n_batches = int(meta["n_batches"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise PopstatsError(
            f"load_state(path=...): {os.fspath(path)!r} is corrupted "
            f"({type(exc).__name__}: {exc}). Delete it and start the pass again."
        ) from None
    return EstimationState(names, tuple(states), n_batches)
