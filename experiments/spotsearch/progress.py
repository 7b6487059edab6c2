"""How far a search has got: the fits it will run, the fits finished (read from the scheduler's
task stream, so that any search object is counted without changing it), and a bar of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from spotsearch.cluster.polling import Poller
from spotsearch.saved_fits import SavedFits
from spotsearch.upstream import DASK_ML_FIT, JOBLIB_BATCH


def expected_fits(search, X, y, fit_params: dict | None = None) -> int | None:
    """How many (candidate, split) fits the search will run, or None when that is not known
    beforehand. Never touches the search's cv beyond asking it: an iterable of splits (a
    generator, say) would be used up by counting it."""
    from numbers import Integral

    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if hasattr(search, "factor"):  # successive halving: rounds and candidates follow the scores
        return None
    if hasattr(search, "param_grid"):
        candidates = len(ParameterGrid(search.param_grid))
    elif hasattr(search, "n_trials") and search.n_trials is not None:  # adaptive.py's: at most, as pruning saves fits
        candidates = search.n_trials
    elif hasattr(search, "n_iter") and hasattr(search, "param_distributions"):
        candidates = len(ParameterSampler(search.param_distributions, search.n_iter, random_state=0))
    else:
        return None
    cv = search.cv
    if cv is None:
        return candidates * 5  # scikit-learn's and dask-ml's default
    if isinstance(cv, Integral):
        return candidates * int(cv)
    if not hasattr(cv, "get_n_splits"):
        return None
    try:
        return candidates * cv.get_n_splits(X, y, (fit_params or {}).get("groups"))
    except (TypeError, ValueError):  # a splitter that needs what it was not given
        return None


class FitCounter:
    """Counts finished fits from the scheduler's task stream, looked at every `interval` seconds,
    and the saved fits a search takes instead of running them."""

    def __init__(self, client, on_fits: Callable[[int], object], saved: SavedFits, interval: float = 0.25) -> None:
        self._client, self._on_fits, self._saved = client, on_fits, saved
        self._poller = Poller(self._poll, interval, "fit-counter")
        self._closed = False
        self._seen: set[str] = set()  # a task recomputed after a lost worker counts once
        self._taken = len(saved.taken)

    def _poll(self) -> None:
        taken = len(self._saved.taken)
        fits, self._taken = taken - self._taken, taken
        try:
            records = self._client.sync(self._client.scheduler.get_task_stream, start_index=self._start)
        except (OSError, TimeoutError):  # no scheduler just now: the search says so
            records = []
        self._start += len(records)  # the next look asks only for what is new
        for record in records:
            key = str(record["key"])
            if key in self._seen or key in self._saved.taken or record.get("status") == "error":
                continue
            self._seen.add(key)
            if batch := JOBLIB_BATCH.search(key):
                fits += int(batch.group(1))
            elif DASK_ML_FIT.search(key):
                fits += 1
        if fits and not self._closed:  # a look left behind by a lost scheduler reports nothing late
            self._on_fits(fits)

    def __enter__(self) -> FitCounter:
        self.restart()
        self._poller.start()
        return self

    def restart(self) -> None:
        """Count from now on this scheduler (a new one, after a lost connection, starts at zero).
        Asking for the cursor also starts the recording, if nothing had asked before."""
        self._start = self._client.sync(self._client.scheduler.get_task_stream_index)

    def __exit__(self, *exc_info) -> None:
        # The last fits, finished since the last look, unless the search failed.
        self._poller.stop(last_look=exc_info[0] is None)
        self._closed = True


@contextmanager
def progress_bar(total: int | None, also: Callable[[int], object] | None) -> Iterator[Callable[[int], object]]:
    """A bar of the fits (tqdm's widget in a notebook, text in a terminal), and what counts on it."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="fits", unit="fit") as bar:

        def counted(fits: int) -> None:
            bar.update(fits)
            if also is not None:
                also(fits)

        yield counted
