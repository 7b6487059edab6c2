"""The adaptive search's loop alone (experiments/spotsearch/study_loop.py), its fits stand-ins
finished by threads: the same study whatever order the fits finish in, one candidate asked as one
is told, a candidate's first fold alone, and an error that cancels what is on its way."""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import Future

import pytest


def test_the_study_does_not_depend_on_the_order_the_fits_finish_in():
    """The loop alone, its fits finished by a thread in a shuffled order and at random moments."""
    import optuna

    from spotsearch.study_loop import StudyLoop

    space = {"x": optuna.distributions.FloatDistribution(1e-3, 1e3, log=True)}

    def run(order_seed: int) -> tuple[list, list]:
        shuffle, queue, submitted, lock = random.Random(order_seed), [], [], threading.Lock()  # noqa: S311

        def submit(trial, fold: int) -> Future:
            future = Future()
            # Every candidate scores the same on its first fold: pruned later, with folds on their way.
            future.score = 5.0 if fold == 0 else 10 - (math.log10(trial.params["x"]) - 1) ** 2 + 0.01 * fold
            with lock:
                queue.append(future)
                submitted.append(future)
            return future

        def finish() -> None:
            while not stop.is_set():
                with lock:
                    if queue:
                        future = queue.pop(shuffle.randrange(len(queue)))
                        if future.set_running_or_notify_cancel():
                            future.set_result(None)
                time.sleep(shuffle.choice([0, 0, 0.001]))

        stop = threading.Event()
        finisher = threading.Thread(target=finish, daemon=True)
        finisher.start()
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=3))
        loop = StudyLoop(
            study, space, n_splits=4, in_flight=6, n_trials=40, deadline=None,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5), submit=submit,
            score=lambda future: (future.score, 0.0), cancel=lambda futures: [future.cancel() for future in futures],
        )  # fmt: skip
        try:
            loop.run()
        finally:
            stop.set()
            finisher.join()
        return [(t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials], submitted

    first, submitted = run(1)
    again, _ = run(2)
    assert first == again
    pruned = [steps for _, state, _, _, steps in first if state == "PRUNED"]
    assert len(pruned) >= 5 and any(len(steps) > 1 for steps in pruned), "pruning, late too, must not change"
    assert len(first) == 40
    assert all(future.done() for future in submitted), "pruned candidates' folds on their way were cancelled"


class FakeFits:
    """Fits for the loop alone: each a Future this object finishes when asked to."""

    def __init__(self, slow_from: int | None = None) -> None:
        self.slow_from = slow_from  # trials from this one on take half a second
        self.sent: list[tuple[int, int, Future]] = []  # (trial, fold, future), in the order sent
        self.loop = None
        self.told_at_ask: dict[int, int] = {}

    def submit(self, trial, fold: int) -> Future:
        if fold == 0:
            self.told_at_ask[trial.number] = self.loop.told
        future = Future()
        future.trial, future.fold = trial, fold
        self.sent.append((trial.number, fold, future))
        slow = self.slow_from is not None and trial.number >= self.slow_from
        threading.Timer(0.5 if slow else 0.001 * (1 + (trial.number * 7 + fold) % 5), self._finish, [future]).start()
        return future

    @staticmethod
    def _finish(future: Future) -> None:
        if future.set_running_or_notify_cancel():
            future.set_result(1 - abs(math.log10(future.trial.params["x"])) / 3)

    def run(self, *, in_flight: int, n_trials: int, score=None, pruner=None):
        import optuna

        from spotsearch.study_loop import StudyLoop

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        self.loop = StudyLoop(
            study, {"x": optuna.distributions.FloatDistribution(1e-3, 1e3, log=True)}, n_splits=3,
            in_flight=in_flight, n_trials=n_trials, deadline=None, pruner=pruner, submit=self.submit,
            score=score or (lambda future: (future.result(), 0.0)), cancel=lambda futures: [f.cancel() for f in futures],
        )  # fmt: skip
        return study, self.loop.run()


def test_each_candidate_is_asked_once_the_one_in_flight_before_it_is_told_and_its_first_fold_runs_alone():
    fits = FakeFits()
    study, candidates = fits.run(in_flight=3, n_trials=12)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 12
    assert fits.told_at_ask == {n: max(0, n - 3 + 1) for n in range(12)}, "trial n asked right after n - 3 is told"
    for trial, fold, _ in fits.sent:
        if fold > 0:
            first = next(f for t, k, f in fits.sent if t == trial and k == 0)
            assert first.done(), "a candidate's other folds go once its first is back"
    assert sorted((t, k) for t, k, _ in fits.sent) == [(t, k) for t in range(12) for k in range(3)]
    assert [c.means[-1] for c in candidates] == [t.value for t in study.trials]


class StalledFits(FakeFits):
    """Trials from 5 on never end by themselves, but trial 5's first fold, which ends once trial
    6 is on its way: whatever the machine's pace, something is in flight when trial 5 is scored."""

    def submit(self, trial, fold: int) -> Future:
        if trial.number < 5:
            return super().submit(trial, fold)
        future = Future()
        future.trial, future.fold = trial, fold
        self.sent.append((trial.number, fold, future))
        if (trial.number, fold) == (6, 0):
            self._finish(next(f for t, k, f in self.sent if (t, k) == (5, 0)))
        return future


def test_a_fit_that_raises_ends_the_loop_with_its_error_and_cancels_every_fit_on_its_way():
    fits = StalledFits()

    def score(future):
        if future.trial.number == 5:
            raise ValueError("the fit's own error")
        return future.result(), 0.0

    with pytest.raises(ValueError, match="the fit's own error"):
        fits.run(in_flight=4, n_trials=20, score=score)
    # Fits from trial 6 on end only when cancelled: every one of them was.
    stalled = [future for trial, _, future in fits.sent if trial >= 6]
    assert stalled and all(future.cancelled() for future in stalled), "those on their way were cancelled"
    assert all(future.done() for _, _, future in fits.sent), "nothing left running"


def test_a_candidate_is_told_the_mean_of_its_folds_with_each_fold_on_record():
    fits = FakeFits()
    study, _ = fits.run(in_flight=2, n_trials=4)
    for trial in study.trials:
        expected = 1 - abs(math.log10(trial.params["x"])) / 3
        assert trial.value == pytest.approx(expected)
        assert trial.intermediate_values == pytest.approx({0: expected, 1: expected, 2: expected})
        assert trial.user_attrs["fold_scores"] == pytest.approx([expected] * 3)
        assert len(trial.user_attrs["fold_seconds"]) == 3


def test_a_candidate_whose_folds_failed_is_told_failed_and_never_pruned():
    import optuna

    fits = FakeFits()

    def score(future):  # error_score's NaN for trial 6, a real score for the others
        return (math.nan if future.trial.number == 6 else future.result()), 0.0

    study, _ = fits.run(in_flight=2, n_trials=10, score=score, pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    failed = study.trials[6]
    assert failed.state.name == "FAIL" and len(failed.intermediate_values) == 3, "every fold ran, as in scikit-learn"
    assert {t.state.name for t in study.trials[:6]} <= {"COMPLETE", "PRUNED"}


def test_a_time_budget_asks_no_candidate_once_it_is_over():
    import optuna

    from spotsearch.study_loop import StudyLoop

    study = optuna.create_study(direction="maximize")
    loop = StudyLoop(
        study, {"x": optuna.distributions.FloatDistribution(0, 1)}, n_splits=3, in_flight=2, n_trials=None,
        deadline=time.monotonic() - 1, pruner=None, submit=None, score=None, cancel=None,
    )  # fmt: skip
    assert loop.run() == [] and study.trials == []
