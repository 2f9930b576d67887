"""Saving and loading population statistics and estimation states (``.npz``).

The format is a NumPy ``.npz`` archive, read without pickle:

``popstats_format``
    ``"popstats.statistics"`` or ``"popstats.state"``.
``format_version``
    ``3`` for statistics, ``3`` for states. Older files are refused, with
    the reason: statistics of version 1 were identified by random per-build
    keys, which cannot be matched in another process; version 2 did not
    record ``max_steps``; states of version 1 did not record the estimator,
    time modes or ``max_steps`` their arrays were made with, states of
    version 2 (checkpoints included) lack the fields of the standard errors
    (``docs/estimators.rst``, "Standard errors"). A statistics file without
    standard errors (written before popstats kept them, same version) loads,
    its statistics' ``standard_error`` None.
``meta``
    JSON text. For statistics: ``{"statistics": [...]}`` with, per
    statistic, ``name``, ``label``, ``fingerprint`` (where it is computed,
    see :mod:`popstats._src.graph.identity`), ``path`` (the enclosing loops as ``[name,
    fingerprint]`` pairs, outermost first), ``key`` (informative only),
    ``shape`` (static shape, ``null`` where unknown), ``dtype``, ``role``,
    ``group``, ``counted``, ``time`` (per loop: ``"step"`` or ``"pooled"``),
    ``estimator`` (``{"name": ..., "momentum": ..., "unbiased": ...}``, with
    ``"debias": true`` for a debiased ``ema``; a file without it reads as
    not debiased),
    ``max_steps`` and ``n_batches``. For states: ``{"spec": ..., "n_batches":
    int, "checkpoint": null or {"start_batches": int, "start_digest": str}}``
    where ``spec`` is the :class:`~popstats._src.estimation.spec.PassSpec` (per
    statistic its identity, role, time modes and estimator; ``max_steps``)
    and ``checkpoint``, for a file written by ``Estimation.run(checkpoint=
    ...)``, the state the run started from (its batch count and
    :func:`~popstats._src.estimation.state.state_digest`).
``value/<i>``, ``coverage/<i>``, ``standard_error/<i>``
    For statistics: the population value (float64, time axes first), the
    batches per step, and (optional: absent in older files) the value's
    standard error (float64, the value's shape, ``inf`` where fewer than 2
    batches reached).
``state/<i>/<field>``
    For states: the estimator's arrays of statistic ``i``.

Files are written to a temporary file in the same folder (named
``.<file name, first 100 characters>.<host>-<pid>.<random>.popstats-tmp``)
and renamed, so an interrupted save never leaves a half-written file in
place. A process killed while saving leaves its temporary file; the next
save to the same path (or run with that checkpoint) on the same host
removes it, once its process has ended.

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:data:`FORMAT_VERSION`, :obj:`STATE`, :data:`STATE_FORMAT_VERSION`,
:obj:`STATISTICS`, :func:`check_target`, :func:`read`,
:func:`remove_stale_temporaries`, :func:`write`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import tokenize
import zipfile
import zlib

import numpy as np

from popstats._src.errors import PopstatsError, describe_value

__all__ = [
    "FORMAT_VERSION",
    "STATE",
    "STATE_FORMAT_VERSION",
    "STATISTICS",
    "check_target",
    "read",
    "remove_stale_temporaries",
    "write",
]

FORMAT_VERSION = 3  # of statistics files
STATE_FORMAT_VERSION = 3
STATISTICS, STATE = "popstats.statistics", "popstats.state"
_STATS, _STATE = STATISTICS, STATE
_VERSIONS = {_STATS: FORMAT_VERSION, _STATE: STATE_FORMAT_VERSION}
_OLD = {
    (_STATS, 1): "identified statistics by keys that are new in every process, "
    "so its values cannot be matched with a graph built here",
    (_STATS, 2): "does not record the max_steps its values were estimated with",
    (_STATE, 1): "does not record the estimator, time modes and max_steps its "
    "arrays were made with, so they cannot be checked against this pass",
    (_STATE, 2): "was written by an older popstats, whose states do not hold the "
    "sums standard errors are computed from (they cannot be rebuilt from its "
    "arrays)",
}
_TMP_SUFFIX = ".popstats-tmp"
#: what reading a damaged or foreign file can raise (zipfile: NotImplementedError
#: for unknown flags, RuntimeError for "encrypted" members; a garbled array
#: header: SyntaxError, or tokenize's TokenError on Python 3.12)
_UNREADABLE = (
    OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
    zlib.error, NotImplementedError, RuntimeError, SyntaxError, tokenize.TokenError,
)


def check_target(path: object, where: str, example: str = "stats.npz") -> str:
    """The path to write, or a PopstatsError naming what is wrong with it.

    ``where`` names the call and argument, e.g. ``"estimate(checkpoint=...)"``.
    """
    if not isinstance(path, str | os.PathLike):
        raise PopstatsError(
            f"{where}: expected a file path, got {describe_value(path)}."
        )
    path = os.fspath(path)
    if not path:
        raise PopstatsError(
            f"{where}: the path is empty. Give a file path, e.g. {example!r}."
        )
    if os.path.isdir(path):
        raise PopstatsError(
            f"{where}: {path!r} is a folder. Give a file path in it, e.g. "
            f"{os.path.join(path, example)!r}."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise PopstatsError(
            f"{where}: cannot write {path!r}: {folder!r} is a file, not a "
            f"folder. Choose a path in a folder."
        )
    if not os.path.isdir(folder):
        raise PopstatsError(
            f"{where}: cannot write {path!r}: its folder {folder!r} does "
            f"not exist. Create it first (os.makedirs(folder, exist_ok=True))."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PopstatsError(
            f"{where}: cannot write {path!r}: its folder {folder!r} is not "
            f"writable. Choose a folder you can write to."
        )
    return path


def write(
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
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f"{_tmp_prefix(path)}{_writer()}.", suffix=_TMP_SUFFIX, dir=folder
        )
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


def _tmp_prefix(path: str) -> str:
    """The start of the temporary files' names for ``path`` (kept short)."""
    return f".{os.path.basename(path)[:100]}."


def _writer() -> str:
    """This process, as temporary names record it: ``host-pid``."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def _gone(writer: str) -> bool:
    """Whether ``writer`` (``host-pid``) is a process of this host that ended."""
    host, _, pid = writer.rpartition("-")
    if host != _writer().rpartition("-")[0] or not pid.isdigit():
        return False  # another machine's (a shared folder): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def remove_stale_temporaries(path: str) -> list[str]:
    """Delete temporary files that killed saves to ``path`` left behind.

    A temporary file is named ``.<file>.<host>-<pid>.<random>.popstats-tmp``;
    one whose writer was a process of this host that has ended is stale (a
    process killed while saving). Temporary files of running processes and
    of other hosts are left alone. Called before every save and when a run
    with a checkpoint starts. Returns the paths removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _tmp_prefix(path)
    removed: list[str] = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(_TMP_SUFFIX)):
            continue
        writer = entry[len(prefix) :].split(".", 1)[0]
        if not _gone(writer):
            continue
        stale = os.path.join(folder, entry)
        try:
            os.unlink(stale)
        except OSError:
            continue
        removed.append(stale)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read(
    path: str | os.PathLike, kind: str, call: str, where: str | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and all arrays of a file (read at once, file closed).

    Errors start with ``where`` (default ``"{call}(path=...)"``), e.g.
    ``"estimate(checkpoint=...)"`` for a checkpoint; the fix they give for
    a damaged file is ``again``-style: save again, or for a checkpoint,
    delete it.
    """
    at = where or f"{call}(path=...)"
    again = ("Delete it (or choose another checkpoint path) to start over"
             if where else "Save it again")
    if not isinstance(path, str | os.PathLike):
        raise PopstatsError(
            f"{at}: expected a file path, got {describe_value(path)}."
        )
    if os.path.isdir(path):
        raise PopstatsError(
            f"{at}: {os.fspath(path)!r} is a folder, not a popstats file. Give "
            f"the path of a file in it."
        )
    if not os.path.isfile(path):
        raise PopstatsError(
            f"{at}: no file at {os.fspath(path)!r}. Check the path "
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
            f"{at}: {os.fspath(path)!r} is not a popstats file or is "
            f"corrupted ({type(exc).__name__}: {_first_line(exc)}). {again}."
        ) from None
    wanted = _VERSIONS.get(fmt)
    if (fmt, version) in _OLD:
        again = "Estimate again and save" if fmt == _STATS else (
            "Delete the checkpoint and run the pass again (it starts over)"
            if where else "Delete it and run the pass again")
        raise PopstatsError(
            f"{at}: {os.fspath(path)!r} has format version {version}, "
            f"which {_OLD[fmt, version]}. {again} (this popstats writes version "
            f"{wanted})."
        )
    if wanted is not None and version != wanted:
        raise PopstatsError(
            f"{at}: {os.fspath(path)!r} has format version {version}; "
            f"this popstats reads version {wanted}. Use the popstats "
            f"release that wrote it, or estimate again."
        )
    if fmt != kind:
        raise PopstatsError(
            f"{at}: {os.fspath(path)!r} holds {fmt!r}, not {kind!r}. "
            f"Use popstats.load for statistics and popstats.load_state for "
            f"estimation states."
        )
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError) as exc:
        raise PopstatsError(
            f"{at}: {os.fspath(path)!r} is corrupted (its metadata "
            f"cannot be read: {exc}). {again}."
        ) from None
    return meta, arrays


def _first_line(exc: BaseException) -> str:
    """An exception's message, first line only (NumPy appends advice).

    NumPy reads a file that is not an archive as a pickle and advises
    ``allow_pickle``, which popstats never does: say what the file is not.
    """
    text = str(exc).strip()
    if "allow_pickle" in text:
        return "not a NumPy .npz archive"
    return text.splitlines()[0] if text else type(exc).__name__
