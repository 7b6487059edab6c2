"""A search's finished fits, kept on the laptop as they arrive: what a lost scheduler, a lost
connection or Ctrl-C cannot take away.

Each (candidate, split) fit is saved under a key that names what was fitted: dask-ml's own
task key (a hash of the estimator, the candidate, the split and the data), or, for
scikit-learn's searches, a hash of the estimator, the candidate and the split's rows. The folder
also records the search and the data its fits belong to (`search.json`): a search or data that
differ are refused before any work, so a stale result is never reused. Without a folder the
fits are kept in memory only, which still lets a search that reconnects run only what it lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import threading
from pathlib import Path

from experiments.cluster.messages import ClusterError, console

IDENTITY = "search.json"
SUFFIX = ".fit"
# A search's settings that change how it runs, never what it computes.
HOW_IT_RUNS = frozenset({"n_jobs", "pre_dispatch", "scheduler", "verbose", "cache_cv"})


def describe(value) -> object:
    """A value as plain, repeatable data for hashing: an estimator by its class and parameters,
    a scipy distribution by its name and arguments (pickling one would include the state of
    numpy's global random generator, which changes as the program runs), arrays by content."""
    from dask.base import tokenize
    from sklearn.base import BaseEstimator

    if isinstance(value, BaseEstimator):
        own = value.get_params(deep=False)
        return [f"{type(value).__module__}.{type(value).__qualname__}", describe(own)]
    if isinstance(value, dict):
        return [[str(name), describe(item)] for name, item in value.items()]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [describe(item) for item in value]]
    if hasattr(value, "dist") and hasattr(value, "args") and hasattr(value, "kwds"):  # scipy.stats, frozen
        name = getattr(value.dist, "name", str(value.dist))
        return ["distribution", name, describe(value.args), describe(value.kwds)]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return tokenize(value)


def search_identity(search, X, y, fit_params: dict) -> dict:
    """What the saved fits belong to: the search's class and settings, and the data."""
    from dask.base import tokenize

    settings = {name: value for name, value in search.get_params(deep=False).items() if name not in HOW_IT_RUNS}
    return {
        "search": f"{type(search).__module__}.{type(search).__qualname__}",
        "settings": tokenize(describe(settings)),
        "data": tokenize(X, y, describe(fit_params)),
    }


def draws_at_random(search) -> bool:
    """A search that draws its candidates (or, halving, its samples) from random_state=None."""
    params = search.get_params(deep=False)
    random_candidates = "param_distributions" in params or "factor" in params
    return random_candidates and "random_state" in params and params["random_state"] is None


def unrepeatable(search) -> str | None:
    """Why the search's fits would differ on a second run (so saved ones cannot be reused), or None."""
    cv = search.get_params(deep=False).get("cv")
    if getattr(cv, "shuffle", False) and getattr(cv, "random_state", 0) is None:
        return "its cv shuffles with random_state=None, so its splits differ on every run"
    return None


def joblib_fit_key(args: tuple, kwargs: dict) -> str:
    """The key of one call of scikit-learn's `_fit_and_score`: estimator, candidate, split rows.
    The data and the search's other settings are the folder's identity."""
    from dask.base import tokenize

    estimator = args[0] if args else kwargs.get("estimator")
    return tokenize(
        describe(estimator),
        describe(kwargs.get("parameters")),
        kwargs.get("train"),
        kwargs.get("test"),
        describe({name: kwargs.get(name) for name in ("return_train_score", "error_score", "return_parameters")}),
    )


class SavedFits:
    """Finished fits by key, in memory and, given a folder, on disk (one small file each)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._fits: dict[str, object] = {}
        self._lock = threading.Lock()
        self._earlier: set[str] = set()  # the fits an earlier run saved
        self.taken: set[str] = set()  # those this run took instead of running them
        self._not_writable = self._opened = False
        # The seed a search with random_state=None runs with, drawn once per run: run again
        # (reconnected, resumed), it draws the same candidates.
        self.random_state = int.from_bytes(os.urandom(4), "little")

    def __len__(self) -> int:
        return len(self._fits)

    def open_for(self, search, X, y, fit_params: dict) -> SavedFits:
        """Check (or record) that the folder's fits are this search's, on this data, and load them.
        Refused in one line, before any work, if they are not. Once is enough (the runner opens
        a resumed run before it starts the cluster)."""
        if self.folder is None or self._opened:
            return self
        identity = search_identity(search, X, y, fit_params)
        recorded_path = self.folder / IDENTITY
        if recorded_path.is_file():
            recorded = json.loads(recorded_path.read_text())
            differs = [part for part in ("search", "settings", "data") if recorded.get(part) != identity[part]]
            if differs:
                raise ClusterError(
                    f"the saved fits in {self.folder} are of another {' and '.join(differs)} "
                    f"(saved: {recorded.get('search')}); resume with the same search and data, or start a new run"
                )
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise ClusterError(f"{self.folder} holds files but no {IDENTITY}: not a folder of saved fits")
        self.folder.mkdir(parents=True, exist_ok=True)
        files = sorted(self.folder.glob(f"*{SUFFIX}"))
        if files and (why := unrepeatable(search)):
            raise ClusterError(f"cannot resume {type(search).__name__}: {why}; set it to a number")
        if recorded_path.is_file():
            self.random_state = recorded.get("random_state", self.random_state)
        else:
            identity["random_state"] = self.random_state
            write_atomically(recorded_path, json.dumps(identity, indent=2).encode())
        for path in files:
            try:
                # Files this program wrote, in the user's own run folder (as trusted as their code).
                key, value = pickle.loads(path.read_bytes())  # noqa: S301
            except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError):
                continue  # unreadable (a disk that filled up, say): that fit runs again
            self._fits[key] = value
            self._earlier.add(key)
        self._opened = True
        return self

    def fixed_random_state(self, search) -> dict:
        """The parameter that makes the search draw this run's candidates, if it draws at random."""
        return {"random_state": self.random_state} if draws_at_random(search) else {}

    def __contains__(self, key: str) -> bool:
        return key in self._fits

    @property
    def reused(self) -> int:
        """How many fits saved by an earlier run this run took instead of running them."""
        return len(self.taken)

    def take(self, key: str):
        """A saved fit's result, instead of running the fit."""
        if key in self._earlier:
            with self._lock:
                self.taken.add(key)
        return self._fits[key]

    def save(self, key: str, value) -> None:
        """Keep one finished fit: in memory, and in the folder as one file written whole or not at all."""
        with self._lock:
            self._fits[key] = value
        if self.folder is None or self._not_writable:
            return
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + SUFFIX
        try:
            write_atomically(self.folder / name, pickle.dumps((key, value), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as error:  # a full disk, say: the search goes on, its fits kept in memory
            self._not_writable = True
            reason = error.strerror or error
            console(f"warning: fits are no longer saved in {self.folder} ({reason}); the search goes on")


def write_atomically(path: Path, data: bytes) -> None:
    """A file that is either absent or complete, whatever stops the program (the rename is atomic)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".saving-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
