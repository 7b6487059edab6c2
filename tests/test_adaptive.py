"""AdaptiveSearchCV (experiments/spotsearch/adaptive.py, study_loop.py): the same study for the
same seed whatever the timing, pruned candidates' folds cancelled, scikit-learn's results for the
candidates it evaluated, error_score as in scikit-learn, and a study that a Ctrl-C or a lost
scheduler does not change."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from spotsearch.adaptive import JOURNAL, AdaptiveSearchCV
from spotsearch.saved_fits import SUFFIX, SavedFits
from spotsearch.search import fit_on_cluster

from .restartable_cluster import CountedSaves, RestartableCluster
from .search_cases import assert_clean, comparable, digits


def svc_search(**options) -> AdaptiveSearchCV:
    from scipy.stats import loguniform
    from sklearn.svm import SVC

    settings = {"n_trials": 24, "cv": 3, "random_state": 0, "candidates_in_flight": 4, **options}
    return AdaptiveSearchCV(SVC(), {"C": loguniform(1e-2, 1e3), "gamma": loguniform(1e-5, 1e0)}, **settings)


def trials(search) -> list[tuple]:
    return [(t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in search.study_.trials]


def folds_run(search) -> int:
    return sum(score is not None for t in search.study_.trials for score in t.user_attrs["fold_scores"])


def test_the_same_seed_gives_the_same_study_and_another_seed_another(process_cluster):
    X, y = digits()
    first, again, other = svc_search(), svc_search(), svc_search(random_state=1)
    for search in (first, again, other):
        fit_on_cluster(search, X, y, client=process_cluster, progress=False)
    assert trials(first) == trials(again)
    assert first.best_params_ == again.best_params_
    assert [t[2] for t in trials(other)] != [t[2] for t in trials(first)], "the control: another seed draws others"


def test_pruned_candidates_folds_are_cancelled_and_the_cluster_is_left_clean(process_cluster):
    X, y = digits()
    search, saved = svc_search(), CountedSaves()
    fit_on_cluster(search, X, y, client=process_cluster, progress=False, saved_fits=saved)

    evaluated = len(search.cv_results_["params"])
    assert search.n_pruned_ >= 3, "the case prunes"
    assert evaluated + search.n_pruned_ == search.n_trials_ == 24
    assert len(saved.saves) == len(set(saved.saves)) == folds_run(search), "every fold ran once, none after"
    assert search.fits_saved_by_pruning_ == 24 * 3 - folds_run(search) > 0
    assert_clean(process_cluster)


@pytest.mark.parametrize("case", ["one metric", "several metrics, train scores, sample weights"])
def test_the_results_are_scikit_learns_for_the_candidates_it_evaluated(process_cluster, case):
    from sklearn.model_selection import GridSearchCV

    X, y = digits()
    options, fit_params = {}, {}
    if case != "one metric":
        options = {"scoring": ["accuracy", "f1_macro"], "refit": "f1_macro", "return_train_score": True}
        fit_params = {"sample_weight": np.linspace(0.5, 1.5, len(y))}
    search = svc_search(**options)
    fit_on_cluster(search, X, y, client=process_cluster, progress=False, **fit_params)

    grid = [{name: [value] for name, value in params.items()} for params in search.cv_results_["params"]]
    plain = GridSearchCV(search.estimator, grid, cv=3, **options).fit(X, y, **fit_params)
    timing = ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")
    for key, theirs in plain.cv_results_.items():
        if key not in timing and not key.endswith(("_fit_time", "_score_time")):
            mine = search.cv_results_[key]
            if np.asarray(theirs).dtype.kind in "fiu":
                np.testing.assert_array_equal(np.asarray(mine, float), np.asarray(theirs, float), err_msg=key)
            else:
                assert list(map(comparable, mine)) == list(map(comparable, theirs)), key
    assert search.best_params_ == plain.best_params_ and search.best_index_ == plain.best_index_
    assert search.best_score_ == plain.best_score_
    np.testing.assert_array_equal(search.best_estimator_.predict(X), plain.best_estimator_.predict(X))
    told = {t.number: t.value for t in search.study_.trials if t.state.name == "COMPLETE"}
    metric = "mean_test_f1_macro" if case != "one metric" else "mean_test_score"
    assert [told[n] for n in search.cv_results_["trial_number"]] == pytest.approx(list(search.cv_results_[metric]))


def test_a_candidate_whose_fit_raises_is_handled_as_error_score_says(process_cluster):
    from sklearn.exceptions import FitFailedWarning
    from sklearn.svm import SVC

    X, y = digits()
    space = {"C": [-1.0, 0.5, 5.0], "gamma": [1e-3, 1e-2]}  # SVC refuses C < 0
    search = AdaptiveSearchCV(SVC(), space, n_trials=8, cv=3, random_state=0)
    with pytest.warns(FitFailedWarning):
        fit_on_cluster(search, X, y, client=process_cluster, progress=False)
    failing = [i for i, params in enumerate(search.cv_results_["params"]) if params["C"] < 0]
    assert failing, "the case draws the failing candidate"
    assert np.isnan(search.cv_results_["mean_test_score"][failing]).all()
    assert search.best_params_["C"] > 0, "the control: the others are scored"
    assert {t.state.name for t in search.study_.trials if t.params["C"] < 0} == {"FAIL"}

    with pytest.raises(ValueError, match="'C' parameter of SVC must be"):
        fit_on_cluster(search.set_params(error_score="raise"), X, y, client=process_cluster, progress=False)
    assert_clean(process_cluster)


def test_a_resume_after_ctrl_c_runs_only_unsaved_fits_and_ends_with_the_uninterrupted_study(process_cluster, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    X, y = digits()
    whole = svc_search()
    fit_on_cluster(whole, X, y, client=process_cluster, progress=False, saved_fits=tmp_path / "whole")

    class InterruptedAfterTwelve(SavedFits):
        def save(self, key: str, value) -> None:
            super().save(key, value)
            if len(self) == 12:  # on fits saved: the scheduler counts a fit before the laptop has it
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # what Ctrl-C does

    with pytest.raises(KeyboardInterrupt):
        fit_on_cluster(svc_search(), X, y, client=process_cluster, saved_fits=InterruptedAfterTwelve(tmp_path / "cut"),
                       progress=False)  # fmt: skip
    assert_clean(process_cluster)
    kept = {path.name for path in (tmp_path / "cut").glob(f"*{SUFFIX}")}
    others = {path.name for path in (tmp_path / "cut").iterdir()} - kept
    assert others == {"search.json", JOURNAL}, "the study kept as a journal, no lock or part of one left"
    assert 12 <= len(kept) < len(list((tmp_path / "whole").glob(f"*{SUFFIX}"))), "interrupted mid-search"

    resumed, saved = svc_search(), CountedSaves(tmp_path / "cut")
    fit_on_cluster(resumed, X, y, client=process_cluster, progress=False, saved_fits=saved)
    assert trials(resumed) == trials(whole)
    assert resumed.best_params_ == whole.best_params_ and resumed.best_score_ == whole.best_score_
    assert saved.reused == len(kept), "every fit saved before Ctrl-C was taken, none ran again"
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "cut" / JOURNAL)))
    (name,) = optuna.get_all_study_names(journal)
    kept_study = optuna.load_study(study_name=name, storage=journal)
    assert [(t.number, t.state.name, t.params, t.value) for t in kept_study.trials] == [t[:4] for t in trials(whole)]


def test_a_lost_scheduler_costs_only_the_fits_in_flight_and_leaves_the_study_as_it_was(process_cluster, tmp_path):

    X, y = digits()
    whole = svc_search()
    fit_on_cluster(whole, X, y, client=process_cluster, progress=False)
    search, saved = svc_search(), CountedSaves(tmp_path / "fits")
    RestartableCluster(tmp_path).fit_losing_the_scheduler(search, X, y, saved, progress=False)
    assert len(saved.saves) == len(set(saved.saves)), "no saved fit ran again"
    assert trials(search) == trials(whole)


def test_fit_on_its_own_runs_on_the_current_client_or_says_in_one_line_that_it_needs_one(process_cluster):
    X, y = digits()
    search = svc_search(n_trials=6).fit(X, y)  # process_cluster's client is the current one
    assert len(search.cv_results_["params"]) == 6 and search.best_score_ > 0.5
    script = (
        "from sklearn.datasets import load_digits\nfrom sklearn.svm import SVC\n"
        "from spotsearch.adaptive import AdaptiveSearchCV\n"
        "AdaptiveSearchCV(SVC(), {'C': [1.0, 10.0]}, n_trials=2).fit(*load_digits(return_X_y=True))\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    assert (
        "ClusterError: AdaptiveSearchCV.fit runs on a Dask cluster: make a client first" in ran.stderr.splitlines()[-1]
    )


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"n_trials": 0}, "n_trials must be a whole number of at least 1, not 0"),
        ({"n_trials": None}, "n_trials and timeout are both None; give it a budget"),
        ({"timeout": -5}, "timeout must be a number of seconds above 0, not -5"),
        ({"candidates_in_flight": 1.5}, "candidates_in_flight must be a whole number of at least 1, not 1.5"),
        ({"pruner": "mean"}, "pruner must be 'median', None or an Optuna pruner, not 'mean'"),
        ({"pruner": "hyperband"}, "pruner HyperbandPruner reads trials still running"),
        ({"param_distributions": {"C": "big"}}, "C: 'big' is neither a list of choices"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_the_cluster_is_asked(settings, said, monkeypatch):
    import spotsearch.search

    def no_cluster(*args, **kwargs):
        raise AssertionError("the cluster was asked for")

    monkeypatch.setattr(spotsearch.search, "fit_on_cluster", no_cluster)
    if settings.get("pruner") == "hyperband":
        import optuna

        settings = {"pruner": optuna.pruners.HyperbandPruner()}
    with pytest.raises(ValueError) as refused:
        svc_search().set_params(**settings).fit(*digits())
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_time_budget_stops_asking_and_finishes_the_candidates_started(process_cluster):
    X, y = digits()
    search = svc_search(n_trials=None, timeout=2)
    started = time.monotonic()
    fit_on_cluster(search, X, y, client=process_cluster, progress=False)
    assert time.monotonic() - started < 60
    assert search.n_trials_ >= 1
    assert {t.state.name for t in search.study_.trials} <= {"COMPLETE", "PRUNED"}, "every trial started was told"


def test_the_progress_counts_every_trial_fold_at_most():
    from spotsearch.progress import expected_fits

    X, y = digits()
    assert expected_fits(svc_search(n_trials=10, cv=4), X, y) == 40
    assert expected_fits(svc_search(n_trials=None, timeout=5), X, y) is None
