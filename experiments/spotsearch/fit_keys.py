"""What a fit is, as a key: the same key for the same fit, in this run or a resumed one, and
a different key for anything that changes what the fit computes (saved_fits.py keeps fits by it).

Values are described by what they are (`describe`): estimators by class and parameters, arrays
by content, functions of a script and closures by value; classes and importable functions by
name. A search's own settings and its data are the run folder's identity (`search_identity`).
"""

from __future__ import annotations

from collections import Counter

from spotsearch.upstream import ESTIMATOR_CONFIG

# A search's settings that change how it runs, never what it computes.
HOW_IT_RUNS = frozenset({"n_jobs", "pre_dispatch", "scheduler", "verbose", "cache_cv"})


def describe(value) -> object:
    """`value` as plain, repeatable data, for hashing: what it computes, not its name.

    Estimators by their class and parameters (and what `clone` keeps besides them), recursively;
    a scipy distribution by its name and arguments (its pickle would hold the state of numpy's
    global random generator, which changes as the program runs); an object of a class made in
    the script by its class and attributes. Everything else by dask's `tokenize`: arrays by
    content; a function or class that can be imported by its name; a lambda, a closure or a
    function of the script by value (its code, the values it captured, the globals it reads),
    so closures from one factory (`make_kernel(gamma)`) differ by what they captured. A value
    `tokenize` cannot pickle the same way twice gets a random token: its fits are never reused,
    and `unrepeatable_settings` names it.

    A class is taken by its name (module and qualified name): an edited estimator class keeps its
    key, as an edited library would."""
    from dask.base import tokenize
    from sklearn.base import BaseEstimator

    if isinstance(value, BaseEstimator):
        own = value.get_params(deep=False)
        config = {name: tokenize(getattr(value, name)) for name in ESTIMATOR_CONFIG if hasattr(value, name)}
        return [_class_name(type(value)), describe(own), config]
    if isinstance(value, dict):
        return ["dict", [[str(name), describe(item)] for name, item in value.items()]]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [describe(item) for item in value]]
    if hasattr(value, "dist") and hasattr(value, "args") and hasattr(value, "kwds"):  # scipy.stats, frozen
        name = getattr(value.dist, "name", str(value.dist))
        return ["distribution", name, describe(value.args), describe(value.kwds)]
    if isinstance(value, (str, int, float, bool, type(None))):
        return [type(value).__name__, repr(value)]  # 1, 1.0 and True are different settings
    if type(value).__module__ == "__main__" and not callable(value) and hasattr(value, "__dict__"):
        # dask would pickle the class by value, with an id that differs in every process.
        return [_class_name(type(value)), describe(vars(value))]
    return tokenize(value)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _settings(search) -> dict:
    return {name: value for name, value in search.get_params(deep=False).items() if name not in HOW_IT_RUNS}


def search_identity(search, X, y, fit_params: dict) -> dict:
    """What the saved fits belong to: the search's class, each of its settings, and the data."""
    from dask.base import tokenize

    return {
        "search": _class_name(type(search)),
        "settings": {name: tokenize(describe(value)) for name, value in _settings(search).items()},
        "data": {
            "X": tokenize(X),
            "y": tokenize(y),
            **{f"fit parameter {name}": tokenize(describe(value)) for name, value in fit_params.items()},
        },
    }


def unrepeatable_settings(search) -> list[str]:
    """The search's settings (deepest first: `estimator__kernel`, not `estimator`) whose
    description differs from one look to the next: their fits cannot be found again."""
    from dask.base import tokenize

    deep = {name: value for name, value in search.get_params(deep=True).items() if name not in HOW_IT_RUNS}
    unstable = [name for name, value in deep.items() if tokenize(describe(value)) != tokenize(describe(value))]
    # The deepest first: a list of steps holds its steps' parameters without their names' prefix.
    return sorted(unstable, key=lambda name: -name.count("__"))


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


class FitKeys:
    """The keys of one run of a scikit-learn search's `_fit_and_score` calls (one per attempt:
    a search run again after a lost scheduler starts counting again).

    A key hashes what the call computes: the estimator, the candidate, the split's rows, the
    scorer, the fit and score parameters and the flags that shape the result; the data and the
    search's other settings are the folder's identity. Its suffix counts the times the same fit
    came before in this run, so that a fit the search asks for twice runs twice, as in
    scikit-learn, and a resumed search finds each of them."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()
        # The scorer and the fit parameters are the same objects in every call: hashed once
        # (held, as an id is only unique while its object lives).
        self._shared: dict[int, tuple[object, object]] = {}

    def _once(self, value) -> object:
        if id(value) not in self._shared:
            self._shared[id(value)] = (value, describe(value))
        return self._shared[id(value)][1]

    def key(self, args: tuple, kwargs: dict) -> str:
        from dask.base import tokenize

        estimator = args[0] if args else kwargs.get("estimator")
        flags = ("return_train_score", "return_n_test_samples", "return_times", "return_estimator", "error_score")
        fit = tokenize(
            describe(estimator),
            describe(kwargs.get("parameters")),
            kwargs.get("train"),
            kwargs.get("test"),
            [self._once(kwargs.get(name)) for name in ("scorer", "fit_params", "score_params")],
            describe({name: kwargs.get(name) for name in flags}),
        )
        self._seen[fit] += 1
        return f"{fit}-{self._seen[fit]}"
