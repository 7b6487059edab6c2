"""Finished fits are kept as they arrive; a search resumed from them runs only the others and ends
as an uninterrupted run does; a search that loses its scheduler waits for it and goes on."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from spotsearch.cluster.messages import ClusterError
from spotsearch.saved_fits import IDENTITY, SUFFIX, SavedFits
from spotsearch.search import fit_on_cluster

from .restartable_cluster import CountedSaves, RestartableCluster
from .search_cases import (
    CASES,
    DASK_ML_CASES,
    assert_clean,
    assert_same_search,
    assert_same_splits,
    digits,
    first_columns,
)


def randomized_without_a_seed():
    """A search that draws its candidates anew on every run: resumed, it must draw the same ones."""
    search, X, y, fit_params = CASES["randomized pipeline"]()
    return search.set_params(random_state=None), X, y, fit_params


def dask_ml_case(name: str):
    def build():
        search, _, X, y, fit_params = DASK_ML_CASES[name]()
        return search, X, y, fit_params

    return build


RESUMABLE = {
    "grid, several metrics": CASES["multi-metric, refit by one"],
    "randomized, no seed": randomized_without_a_seed,
    "halving grid": CASES["halving grid"],
    "halving random forest": CASES["halving random forest"],
    "groups": CASES["groups"],
    "closures from one factory": CASES["closures from one factory"],
    "closures, halving round repeated": CASES["closures, halving round repeated"],
    "dask-ml grid": dask_ml_case("grid"),
    "dask-ml randomized": dask_ml_case("randomized regressor"),
}


def fit_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


@pytest.mark.parametrize("case", RESUMABLE)
def test_a_resumed_search_runs_only_the_unsaved_fits_and_ends_as_an_uninterrupted_one(process_cluster, tmp_path, case):
    search, X, y, fit_params = RESUMABLE[case]()
    whole = CountedSaves(tmp_path)
    fit_on_cluster(search, X, y, saved_fits=whole, **fit_params, client=process_cluster)
    files = fit_files(tmp_path)
    assert len(files) == len(whole.saves) == len(set(whole.saves)) > 0, "each fit saved once, as one file"

    for lost in files[::2]:  # as if the search had stopped before these
        lost.unlink()
    resumed_search, X, y, fit_params = RESUMABLE[case]()
    counted = []
    resumed = CountedSaves(tmp_path)
    fit_on_cluster(
        resumed_search, X, y, saved_fits=resumed, on_fits=counted.append, **fit_params, client=process_cluster
    )

    assert len(resumed.saves) == len(files[::2]), "only the fits not saved ran"
    assert resumed.reused == len(files) - len(files[::2])
    assert_same_search(resumed_search, search)
    if hasattr(search, "best_estimator_"):
        np.testing.assert_array_equal(resumed_search.best_estimator_.predict(X), search.best_estimator_.predict(X))
    assert sum(counted) == len(files), "the progress counts every fit once, the reused ones too"
    assert_clean(process_cluster)


def test_a_search_on_other_data_or_with_other_settings_is_refused_before_any_work_naming_what_differs(
    process_cluster, tmp_path
):
    search, X, y, _ = CASES["multi-metric, refit by one"]()
    fit_on_cluster(search, X, y, saved_fits=tmp_path, client=process_cluster)
    before = {path: path.read_bytes() for path in fit_files(tmp_path)}
    other_labels = y.copy()
    other_labels[0] = (other_labels[0] + 1) % 10
    for other, data, said in [
        (CASES["multi-metric, refit by one"]()[0], (X, other_labels), "another data (data: y differs)"),
        (CASES["multi-metric, refit by one"]()[0].set_params(cv=4), (X, y), "another settings (setting cv differs)"),
        (CASES["multi-metric, refit by one"]()[0].set_params(estimator__C=2.0), (X, y),
         "another settings (setting estimator differs)"),
        (CASES["multi-metric, refit by one"]()[0].set_params(scoring=["accuracy", "f1_micro"]), (X, y),
         "another settings (setting scoring differs)"),
        (CASES["refit false, several metrics"]()[0], (X, y), "another settings (setting param_grid, refit, scoring "
         "differs)"),
        (CASES["randomized pipeline"]()[0], (X, y), "another search (sklearn.model_selection._search.GridSearchCV, "
         "not sklearn.model_selection._search.RandomizedSearchCV)"),
    ]:  # fmt: skip
        with pytest.raises(ClusterError) as refused:
            fit_on_cluster(other, *data, saved_fits=tmp_path, client=process_cluster)
        assert said in str(refused.value)
        assert "\n" not in str(refused.value)
        assert not hasattr(other, "cv_results_")
    assert {path: path.read_bytes() for path in fit_files(tmp_path)} == before
    assert_clean(process_cluster)


def test_a_search_whose_splits_change_on_every_run_is_not_resumed(process_cluster, tmp_path):
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.svm import SVC

    X, y = digits()

    def shuffled():
        return GridSearchCV(SVC(gamma=0.001), {"C": [0.1, 1.0]}, cv=KFold(3, shuffle=True))

    fit_on_cluster(shuffled(), X, y, saved_fits=tmp_path, client=process_cluster)
    with pytest.raises(ClusterError, match="cv shuffles with random_state=None"):
        fit_on_cluster(shuffled(), X, y, saved_fits=tmp_path, client=process_cluster)


def test_a_folder_that_is_not_one_of_saved_fits_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    search, X, y, _ = CASES["groups"]()
    with pytest.raises(ClusterError, match=f"no {IDENTITY}"):
        SavedFits(tmp_path).open_for(search, X, y, {})


class RunsCode:
    """What a planted pickle does when it is loaded: here, leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_a_pickle(path: Path, marker: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(("a key", RunsCode(marker))))


def cut_short(path: Path, marker: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])  # as a disk that filled up would leave it


def give_another_keys_name(path: Path, marker: Path) -> None:
    import json

    saved = json.loads(path.read_text())
    path.with_name("0" * 32 + SUFFIX).write_text(json.dumps(saved))


def hold_an_object(path: Path, marker: Path) -> None:
    import json

    saved = json.loads(path.read_text())
    saved["result"] = {"object": "os.system"}
    path.write_text(json.dumps(saved))


def name_no_dtype(path: Path, marker: Path) -> None:
    import json

    saved = json.loads(path.read_text())
    saved["result"] = {"numpy": "not-a-dtype", "value": 1.0}
    path.write_text(json.dumps(saved))


@pytest.mark.parametrize("spoil", [plant_a_pickle, cut_short, give_another_keys_name, hold_an_object, name_no_dtype])
def test_a_fit_file_that_is_not_one_of_ours_is_refused_in_one_line_and_loading_runs_nothing(
    process_cluster, tmp_path, spoil
):
    search, X, y, fit_params = CASES["groups"]()
    folder = tmp_path / "fits"
    fit_on_cluster(search, X, y, saved_fits=folder, **fit_params, client=process_cluster)
    files = fit_files(folder)
    marker = tmp_path / "code ran"
    spoil(files[0], marker)
    kept = {path: path.read_bytes() for path in fit_files(folder)}
    again = CASES["groups"]()[0]
    with pytest.raises(ClusterError, match=r"\.fit is not a fit this program saved \(.+\); move it out of") as refused:
        fit_on_cluster(again, X, y, saved_fits=folder, **fit_params, client=process_cluster)
    assert "\n" not in str(refused.value)
    assert not marker.exists(), "loading saved fits ran no code"
    assert not hasattr(again, "cv_results_")
    assert {path: path.read_bytes() for path in fit_files(folder)} == kept, "nothing lost"


def test_a_saved_fit_is_plain_json_of_scores_and_timings(process_cluster, tmp_path):
    import json

    search, X, y, _ = CASES["multi-metric, refit by one"]()
    fit_on_cluster(search, X, y, saved_fits=tmp_path, client=process_cluster)
    saved = json.loads(fit_files(tmp_path)[0].read_text())
    assert set(saved) == {"format", "key", "result"}
    result = saved["result"]["dict"]
    assert set(result) == {"fit_error", "test_scores", "n_test_samples", "fit_time", "score_time"}
    assert set(result["test_scores"]["dict"]) == {"accuracy", "f1_macro"}
    assert result["fit_error"] is None and result["n_test_samples"] == 100


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda folder: (folder / IDENTITY).write_text("{not json"), "search.json cannot be read (Expecting"),
        (lambda folder: (folder / IDENTITY).write_text("[1, 2]"), "search.json is not a record of saved fits"),
        (lambda folder: folder.chmod(0o777), "is writable by other users (mode drwxrwxrwx); saved fits are only"),
        (lambda folder: folder.parent.chmod(0o775), "is writable by other users (mode drwxrwxr-x)"),
        (lambda folder: fit_files(folder)[0].chmod(0o666), ".fit is writable by other users (mode -rw-rw-rw-)"),
        (lambda folder: os.chown(folder, 4242, -1), "belongs to another user (uid 4242)"),
    ],
    ids=["malformed search.json", "foreign search.json", "fits folder", "run folder", "fit file", "owner"],
)
def test_a_folder_others_can_change_or_a_broken_record_is_refused_in_one_line(process_cluster, tmp_path, spoil, said):
    search, X, y, fit_params = CASES["groups"]()
    folder = tmp_path / "run" / "fits"
    fit_on_cluster(search, X, y, saved_fits=folder, **fit_params, client=process_cluster)
    spoil(folder)
    again = CASES["groups"]()[0]
    with pytest.raises(ClusterError) as refused:
        fit_on_cluster(again, X, y, saved_fits=folder, **fit_params, client=process_cluster)
    assert said in str(refused.value) and "\n" not in str(refused.value)
    assert not hasattr(again, "cv_results_")


def test_saved_fits_are_made_private_whatever_the_umask(process_cluster, tmp_path):
    search, X, y, fit_params = CASES["groups"]()
    before = os.umask(0o002)  # a user-private-group system's umask: group-writable by default
    try:
        fit_on_cluster(search, X, y, saved_fits=tmp_path / "fits", **fit_params, client=process_cluster)
    finally:
        os.umask(before)
    assert (tmp_path / "fits").stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in (tmp_path / "fits").iterdir()} == {0o600}
    fit_on_cluster(CASES["groups"]()[0], X, y, saved_fits=tmp_path / "fits", **fit_params, client=process_cluster)


def test_a_fit_the_search_repeats_runs_again_as_in_scikit_learn(process_cluster, tmp_path):
    """Successive halving with aggressive elimination fits its first rounds on the same rows:
    the same fits come again, and plain scikit-learn runs them again (their timings too)."""
    search, X, y, fit_params = CASES["closures, halving round repeated"]()
    plain = CASES["closures, halving round repeated"]()[0].fit(X, y)
    assert plain.n_resources_[0] == plain.n_resources_[1], "the case repeats a round on the same rows"
    counted = CountedSaves(None)
    fit_on_cluster(search, X, y, saved_fits=counted, **fit_params, client=process_cluster)
    assert len(counted.saves) == sum(plain.n_candidates_) * 3
    assert counted.reused == 0
    assert_same_search(search, plain)


def unchanged(X, unused=None):
    return X


class Redrawn:
    """A setting that pickles differently each time (as an object holding a fresh random draw would)."""

    drawn = 0

    def __reduce__(self):
        Redrawn.drawn += 1
        return (Redrawn, (), {"draw": Redrawn.drawn})


def test_a_setting_that_is_never_described_the_same_way_is_named_and_its_fits_run(process_cluster, tmp_path, capsys):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    X, y = digits()

    def search():
        pipeline = make_pipeline(FunctionTransformer(unchanged, kw_args={"unused": Redrawn()}), SVC(gamma=0.001))
        return GridSearchCV(pipeline, {"svc__C": [0.1, 1.0]}, cv=3)

    first = CountedSaves(tmp_path)
    fit_on_cluster(search(), X, y, saved_fits=first, client=process_cluster)
    assert len(first.saves) == 6
    assert ("warning: a resume of this search will run every fit again: its setting "
            "estimator__functiontransformer__kw_args ({'unused': <tests.test_saved_fits.Redrawn object at") in capsys.readouterr().err  # fmt: skip
    with pytest.raises(
        ClusterError, match="its setting estimator__functiontransformer__kw_args is not described the same way twice"
    ):
        fit_on_cluster(search(), X, y, saved_fits=tmp_path, client=process_cluster)


def test_a_disk_that_refuses_the_fits_warns_once_and_the_search_finishes(
    process_cluster, tmp_path, monkeypatch, capsys
):
    from spotsearch import saved_fits

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    search, X, y, fit_params = CASES["groups"]()
    store = SavedFits(tmp_path).open_for(search, X, y, fit_params)
    monkeypatch.setattr(saved_fits, "write_atomically", full_disk)
    fit_on_cluster(search, X, y, saved_fits=store, **fit_params, client=process_cluster)
    assert len(search.cv_results_["params"]) == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if "no longer saved" in line]
    assert warnings == [
        f"warning: fits are no longer saved in {tmp_path} (No space left on device); the search goes on"
    ]


def read_a_missing_file(X):
    """A pipeline step of the user's that fails as code reading its own files would."""
    raise FileNotFoundError(errno.ENOENT, "no such file", "/data/features.parquet")


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_a_fit_that_raises_an_os_error_is_the_searchs_error_not_a_lost_scheduler(process_cluster, engine, capsys):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    if engine == "dask-ml":
        from dask_ml.model_selection import GridSearchCV
    else:
        from sklearn.model_selection import GridSearchCV
    X, y = digits()
    pipeline = make_pipeline(FunctionTransformer(read_a_missing_file), SVC())
    search = GridSearchCV(pipeline, {"svc__C": [0.1, 1.0]}, cv=3, error_score="raise")
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="no such file"):
        fit_on_cluster(search, X, y, client=process_cluster)
    assert time.monotonic() - started < 60
    assert "lost the connection" not in capsys.readouterr().err
    assert_clean(process_cluster)


# --- a scheduler lost mid-search, with real processes ---


@pytest.mark.parametrize("engine", ["dask-ml", "scikit-learn"])
def test_a_search_that_loses_its_scheduler_waits_for_the_next_and_loses_no_finished_fit(tmp_path, engine, capsys):
    from sklearn.model_selection import GridSearchCV as Plain
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    if engine == "dask-ml":
        from dask_ml.model_selection import GridSearchCV
    else:
        from sklearn.model_selection import GridSearchCV
    X, y = digits(900)
    if engine == "dask-ml":  # dask-ml cannot search over functions (its graph takes them for tasks)
        estimator, grid = SVC(), {"C": [1, 10, 100, 1000], "gamma": [1e-4, 1e-3, 1e-2, 1e-1, 1]}
    else:  # candidates that differ only by a closure: each fit found again as itself
        estimator = make_pipeline(FunctionTransformer(), SVC())
        grid = {"functiontransformer__func": [first_columns(16), first_columns(64)], "svc__C": [1, 10],
                "svc__gamma": [1e-4, 1e-3, 1e-2, 1e-1, 1]}  # fmt: skip
    search = GridSearchCV(estimator, grid, cv=3)
    saved, counted, cluster = CountedSaves(tmp_path / "fits"), [], RestartableCluster(tmp_path)
    at_loss = cluster.fit_losing_the_scheduler(search, X, y, saved, on_fits=counted.append)

    assert at_loss >= 10, "what had finished before the loss was kept"
    assert len(saved.saves) == len(set(saved.saves)) == 60, "no kept fit ran again"
    plain = Plain(estimator, grid, cv=3).fit(X, y)
    # dask-ml averages the split scores its own way (last-digit differences): its splits are compared.
    (assert_same_splits if engine == "dask-ml" else assert_same_search)(search, plain)
    assert search.best_params_ == plain.best_params_
    said = capsys.readouterr().err
    assert f"lost the connection to the scheduler at {cluster.address}; waiting up to 180 s for it" in said
    assert "reconnected: the search goes on with the fits not yet finished" in said


def test_a_scheduler_that_does_not_come_back_ends_the_search_in_one_line_and_keeps_its_fits(
    tmp_path, monkeypatch, capsys
):
    from distributed import Client
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    from spotsearch.cluster import waiting

    monkeypatch.setattr(waiting, "HEARTBEAT_SECONDS", 1.0)

    X, y = digits(900)
    search = GridSearchCV(SVC(), {"C": [1, 10, 100, 1000], "gamma": [1e-4, 1e-3, 1e-2, 1e-1, 1]}, cv=3)
    counted = []
    cluster = RestartableCluster(tmp_path)

    lost_at = []

    def lose_the_scheduler() -> None:
        while sum(counted) < 6:
            time.sleep(0.02)
        lost_at.append(cluster.kill_scheduler())

    cluster.start()
    try:
        with Client(cluster.address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            losing = threading.Thread(target=lose_the_scheduler, daemon=True)
            losing.start()
            with pytest.raises(ClusterError, match="did not come back within 5 s") as ended:
                fit_on_cluster(search, X, y, saved_fits=tmp_path / "fits", on_fits=counted.append,
                               wait_for_workers=5, client=client)  # fmt: skip
            ended_at = time.monotonic()
            # The search may end before the thread has seen the workers go (a loaded machine).
            losing.join(timeout=180)
            # The wait, and not the client's 60 s connection timeout in a look at the lost scheduler.
            assert ended_at - lost_at[0] < 5 + 20
    finally:
        cluster.stop()
    assert "\n" not in str(ended.value)
    assert len(fit_files(tmp_path / "fits")) >= 4
    assert "  still waiting for the scheduler and a worker: " in capsys.readouterr().err, "the wait is visible"


def test_a_value_a_run_decides_once_is_kept_with_its_fits_for_its_resumes(tmp_path):
    """The adaptive search's candidates in flight: decided by the first run, the resume's too."""
    search, X, y, _ = CASES["multi-metric, refit by one"]()
    first = SavedFits(tmp_path).open_for(search, X, y, {})
    assert first.kept("candidates_in_flight", lambda: 7) == 7
    resumed = SavedFits(tmp_path).open_for(search, X, y, {})
    assert resumed.kept("candidates_in_flight", lambda: pytest.fail("decided again")) == 7
    assert SavedFits().kept("candidates_in_flight", lambda: 3) == 3, "the control: in memory, made once"
