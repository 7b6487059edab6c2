"""AdaptiveSearchCV: a scikit-learn search that learns where to look (Optuna's TPE, asked from the
laptop), stops bad candidates after their first folds, and resumes like every other search.

It is a scikit-learn search (BaseSearchCV): cv_results_, best_params_, best_score_,
best_index_, best_estimator_, refit, several metrics and fit parameters behave as in
RandomizedSearchCV. Its fits are ordinary (candidate, split) fits of the project's engine
(joblib_backend.py): saved as they finish, cancelled on an error, released after. The loop that
picks them is study_loop.py; the candidates in cv_results_ are those evaluated on every fold (a
pruned candidate is in `study_`, with the folds it ran).

The study lives on the laptop: in memory while the search runs, in a journal file beside the saved
fits (`study.journal`) when it ends, however it ends; after a lost scheduler or on --resume it is
rebuilt from the saved fits (which return at once), the same trials for the same seed.
"""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from numbers import Integral
from pathlib import Path
from uuid import uuid4

import numpy as np

from spotsearch.cluster.messages import ClusterError, console
from spotsearch.upstream import base_search

JOURNAL = "study.journal"
# Candidates in flight, at least, whatever the cluster: a first few to learn from as nodes join.
FEWEST_IN_FLIGHT = 4

_FIT_INPUTS: ContextVar[tuple] = ContextVar("adaptive_fit_inputs")  # (X, y, fit params) of the fit running


class AdaptiveSearchCV(base_search()):
    """Search `param_distributions` with Optuna, on the connected Dask cluster.

    Parameters
    ----------
    estimator : any scikit-learn estimator or pipeline.
    param_distributions : dict of parameter name to what to draw from: an Optuna distribution
        (`optuna.distributions.FloatDistribution(1e-3, 1e3, log=True)`, ...), a list of choices,
        or scipy's `loguniform`, `uniform` or `randint` (as RandomizedSearchCV takes them).
    n_trials : how many candidates to try, at most (None: until `timeout`).
    timeout : seconds after which no new candidate is tried (those started finish), or None.
    sampler : a function of the seed that returns an Optuna sampler (`optuna.samplers.RandomSampler`
        works as it is); None: TPE with the constant liar, for candidates tried in parallel.
    pruner : "median" (Optuna's MedianPruner after 5 finished candidates: a candidate whose mean
        score over its first folds is below the median of the finished candidates' on the same
        folds stops there), None for no pruning, or an Optuna pruner that reads finished trials.
    candidates_in_flight : candidates tried at once; None: enough to fill the cluster's threads
        when the search starts (at least 4), kept for the run's resumes.
    scoring, refit, cv, error_score, return_train_score, n_jobs, pre_dispatch, verbose,
    random_state : as in RandomizedSearchCV; with several metrics, `refit` names the one to optimise.

    Attributes: those of RandomizedSearchCV (cv_results_ has a `trial_number` column), and
    `study_` (the Optuna study: every trial, pruned ones too), `n_trials_`, `n_pruned_`,
    `fits_saved_by_pruning_` (the folds pruned candidates did not run).
    """

    def __init__(
        self, estimator, param_distributions, *, n_trials=50, timeout=None, sampler=None, pruner="median",
        candidates_in_flight=None, scoring=None, n_jobs=None, refit=True, cv=None, verbose=0,
        pre_dispatch="2*n_jobs", random_state=None, error_score=np.nan, return_train_score=False,
    ):  # fmt: skip
        super().__init__(
            estimator=estimator, scoring=scoring, n_jobs=n_jobs, refit=refit, cv=cv, verbose=verbose,
            pre_dispatch=pre_dispatch, error_score=error_score, return_train_score=return_train_score,
        )  # fmt: skip
        self.param_distributions = param_distributions
        self.n_trials = n_trials
        self.timeout = timeout
        self.sampler = sampler
        self.pruner = pruner
        self.candidates_in_flight = candidates_in_flight
        self.random_state = random_state

    def fit(self, X, y=None, **params):
        """Fit on the cluster: through fit_on_cluster (which calls this again, on its engine) when
        called on its own, on the current Dask client."""
        from spotsearch.joblib_backend import ACTIVE

        self._check_settings()
        if ACTIVE.get() is None:
            from spotsearch.search import fit_on_cluster

            return fit_on_cluster(self, X, y, client=_client(), **params)
        inputs = _FIT_INPUTS.set((X, y, params))
        try:
            return super().fit(X, y, **params)
        finally:
            _FIT_INPUTS.reset(inputs)

    def _check_settings(self) -> None:
        """Refused in one line, before the cluster is asked for anything."""
        from spotsearch.search_space import optuna_space

        optuna_space(self.param_distributions)
        _pruner(self.pruner)
        if self.n_trials is None and self.timeout is None:
            raise ValueError("AdaptiveSearchCV: n_trials and timeout are both None; give it a budget")
        for name in ("n_trials", "candidates_in_flight"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, Integral) and value >= 1):
                raise ValueError(f"AdaptiveSearchCV: {name} must be a whole number of at least 1, not {value!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValueError(f"AdaptiveSearchCV: timeout must be a number of seconds above 0, not {self.timeout!r}")

    def _run_search(self, evaluate_candidates):
        import time
        import warnings

        from sklearn import get_config
        from sklearn.base import clone
        from sklearn.utils.parallel import delayed

        from spotsearch.fit_keys import FitKeys
        from spotsearch.joblib_backend import ACTIVE
        from spotsearch.s3_data import REFIT
        from spotsearch.search_space import optuna_space
        from spotsearch.study_loop import StudyLoop
        from spotsearch.upstream import configured, fit_and_score, fit_inputs

        backend = ACTIVE.get()
        base, X, y, splits, metric, keywords = fit_inputs(self, *_FIT_INPUTS.get())
        space, decode = optuna_space(self.param_distributions)
        keys, fit = FitKeys(), fit_and_score()  # keys counted as evaluate_candidates will count them
        config, warning_filters = get_config(), list(warnings.filters)  # as scikit-learn's Parallel sends them

        def submit(trial, fold: int):
            train, test = splits[fold]
            call = delayed(fit)(
                clone(base), X, y, train=train, test=test, parameters=decode(trial.params),
                split_progress=(fold, len(splits)), candidate_progress=(trial.number, self.n_trials or 0), **keywords,
            )  # fmt: skip
            return backend.submit_fit(configured(call, config, warning_filters), keys)

        def score(future) -> tuple[float, float]:
            (out,) = backend.retrieve_result_callback(future.result())
            # REFIT: the search's own refit while it runs without one (its data is in S3: s3_data.py).
            refit = REFIT.get(self.refit)
            return _optimised_score(out["test_scores"], metric, refit), out["fit_time"] + out["score_time"]

        study = self._study()
        loop = StudyLoop(
            study, space, n_splits=len(splits), n_trials=self.n_trials, pruner=_pruner(self.pruner),
            deadline=None if self.timeout is None else time.monotonic() + self.timeout,
            in_flight=self.candidates_in_flight or backend.saved.kept("candidates_in_flight",
                                                                     lambda: _filling(backend.client, len(splits))),
            submit=submit, score=score, cancel=backend.cancel,
        )  # fmt: skip
        try:
            with _quiet_optuna(), backend.collecting():
                candidates = loop.run()
        finally:  # however it ends: finished, an error, Ctrl-C, a lost scheduler
            if backend.saved.folder is not None:
                keep_journal(study, backend.saved.folder / JOURNAL)
        pruned = [c for c in candidates if c.state.name == "PRUNED"]
        evaluated = [c for c in candidates if c.state.name != "PRUNED"]
        self.study_, self.n_trials_, self.n_pruned_ = study, len(candidates), len(pruned)
        self.fits_saved_by_pruning_ = sum(len(splits) - len(c.scores) for c in pruned)
        evaluate_candidates(
            [decode(c.trial.params) for c in evaluated], more_results={"trial_number": [c.number for c in evaluated]}
        )

    def _study(self):
        """A new study, in memory: the loop rebuilds an earlier attempt's trials from the saved
        fits (see the module's docstring); `keep_journal` writes it beside them."""
        import optuna
        from sklearn.utils import check_random_state

        seed = self.random_state
        if seed is not None and not isinstance(seed, Integral):
            seed = int(check_random_state(seed).randint(2**31 - 1))
        sampler = (self.sampler or _tpe)(seed=seed)
        with _quiet_optuna():
            return optuna.create_study(sampler=sampler, direction="maximize", study_name=type(self.estimator).__name__)


def keep_journal(study, path: Path) -> None:
    """`study` as an Optuna journal file at `path` (what `optuna.load_study` and optuna-dashboard
    read), written whole then renamed over the last: a Ctrl-C in the middle of the search's
    writes never leaves a journal cut short, or the lock of Optuna's journal, which a later run
    would wait on for ever. A disk that refuses it costs a warning, never the search."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    temporary = path.with_name(f".{path.name}-{uuid4().hex}")
    try:
        with _quiet_optuna():
            kept = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(temporary))),
                                       study_name=study.study_name, direction="maximize")  # fmt: skip
            kept.add_trials(study.get_trials(deepcopy=False))
        os.replace(temporary, path)
    except OSError as error:
        console(f"warning: the study's journal was not written in {path.parent} ({error.strerror or error})")
    finally:
        temporary.unlink(missing_ok=True)


def _tpe(seed):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def _pruner(pruner):
    import optuna

    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if isinstance(pruner, (optuna.pruners.SuccessiveHalvingPruner, optuna.pruners.HyperbandPruner)):
        raise ValueError(f"AdaptiveSearchCV: pruner {type(pruner).__name__} reads trials still running, which this "
                         "search keeps out of a pruner's sight; use 'median' or one of finished trials")  # fmt: skip
    if pruner is None or isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise ValueError(f"AdaptiveSearchCV: pruner must be 'median', None or an Optuna pruner, not {pruner!r}")


def _optimised_score(scores, metric, refit) -> float:
    """The score the study optimises, of one fold's test scores (a dict with several metrics)."""
    if not isinstance(scores, dict):
        return float(scores)
    name = metric if metric in scores else refit
    if not isinstance(name, str) or name not in scores:
        raise ValueError(
            f"AdaptiveSearchCV: with several metrics ({', '.join(scores)}), refit must name the one to optimise, "
            f"not {refit!r}"
        )
    return float(scores[name])


def _filling(client, n_splits: int) -> int:
    """Candidates that keep the cluster's threads busy: each runs its first fold alone, then the
    others at once (about n_splits / 2 threads on average)."""
    threads = sum(client.nthreads().values())
    return max(FEWEST_IN_FLIGHT, math.ceil(2 * threads / n_splits))


def _client():
    from spotsearch.search import current_client

    try:
        return current_client()
    except ClusterError:
        raise ClusterError(
            "AdaptiveSearchCV.fit runs on a Dask cluster: make a client first (`Client(Cluster())` for this "
            "machine's), or use spotsearch.fit_on_cluster / spotsearch.run"
        ) from None


class _quiet_optuna:
    """Optuna's INFO lines (one per trial) and its warnings about experimental options, kept out
    of the search's output for the block."""

    def __enter__(self):
        import warnings

        import optuna

        self._verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return self

    def __exit__(self, *exc_info):
        import optuna

        self._warnings.__exit__(*exc_info)
        optuna.logging.set_verbosity(self._verbosity)
