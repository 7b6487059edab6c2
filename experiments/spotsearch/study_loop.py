"""The adaptive search's loop: Optuna asks for candidates, their folds run on the cluster as soon
as they are asked, a pruner stops the candidates that cannot win (their other folds cancelled),
and the scores are told back, without waiting for a batch to end.

The study is the same for the same seed whatever the timing, which is what lets a resumed
search (or one whose scheduler was replaced) rebuild it from its saved fits and go on with the
same trials:

- trial n is asked right after trial n - W is told, and trials are told in their order, so the
  sampler sees the same history at every ask: the trials up to n - W finished, the W - 1 after
  them running (Optuna's constant liar fills in for those);
- a candidate's pruning compares it with the trials told before it was asked, fold by fold in
  fold order, never with whatever happens to have finished meanwhile.

Each candidate's first fold runs alone: a candidate pruned after it cost one fit, not one per
fold; a candidate that passes sends its other folds at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

# How often the loop looks at the clock for a time budget when no fit has finished.
LOOK_SECONDS = 0.5


@dataclass
class Candidate:
    trial: object  # optuna.trial.Trial
    told_before: int  # how many trials had been told when it was asked: what its pruner compares it with
    scores: dict[int, float] = field(default_factory=dict)  # by fold, as they arrive
    seconds: dict[int, float] = field(default_factory=dict)  # each fold's fit and score time
    running: dict[Future, int] = field(default_factory=dict)  # its folds on their way, by future
    means: list[float] = field(default_factory=list)  # the mean score over folds 0..s, for each fold s taken
    state: object = None  # optuna's TrialState once decided: COMPLETE, PRUNED or FAIL

    @property
    def number(self) -> int:
        return self.trial.number


class StudyLoop:
    """Runs `study` to its budget. `submit(trial, fold)` sends a fold's fit and returns its
    future, `score(future)` is that fit's score and its seconds (raising the fit's error, if it raised),
    `cancel(futures)` stops fits; `pruner` is an Optuna pruner, or None for none."""

    def __init__(
        self, study, distributions: dict, *, n_splits: int, in_flight: int, n_trials: int | None,
        deadline: float | None, pruner, submit: Callable, score: Callable, cancel: Callable,
    ) -> None:  # fmt: skip
        self.study, self.distributions, self.n_splits = study, distributions, n_splits
        self.in_flight, self.n_trials, self.deadline, self.pruner = in_flight, n_trials, deadline, pruner
        self._submit, self._score, self._cancel = submit, score, cancel
        self.candidates: list[Candidate] = []
        self.told = 0
        self._histories: dict[int, object] = {}  # a pruner's view of the study, by trials told

    def run(self) -> list[Candidate]:
        try:
            self._advance()
            while self.told < len(self.candidates):
                pending = [future for c in self.candidates if c.state is None for future in c.running]
                done, _ = wait(pending, timeout=LOOK_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    self._arrived(future)
                self._advance()
        except BaseException:
            self._cancel([future for c in self.candidates for future in c.running])
            raise
        return self.candidates

    def _may_ask(self) -> bool:
        asked = len(self.candidates)
        if self.n_trials is not None and asked >= self.n_trials:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return asked < self.told + self.in_flight

    def _advance(self) -> None:
        """Ask what may be asked, tell the next trial if it is decided, and again: every ask sees
        exactly the trials told before it (see the module's docstring)."""
        while True:
            while self._may_ask():
                candidate = Candidate(self.study.ask(self.distributions), told_before=self.told)
                self.candidates.append(candidate)
                self._send(candidate, [0] if self.n_splits > 1 else range(self.n_splits))
            if self.told == len(self.candidates) or self.candidates[self.told].state is None:
                return
            self._tell(self.candidates[self.told])
            self.told += 1

    def _send(self, candidate: Candidate, folds) -> None:
        for fold in folds:
            candidate.running[self._submit(candidate.trial, fold)] = fold

    def _arrived(self, future: Future) -> None:
        owner = next((c for c in self.candidates if future in c.running), None)
        if owner is None or owner.state is not None:
            return
        fold = owner.running.pop(future)
        owner.scores[fold], owner.seconds[fold] = self._score(future)
        self._take_folds(owner)

    def _take_folds(self, candidate: Candidate) -> None:
        """Its folds' scores in fold order, each a step the pruner may stop it at."""
        while candidate.state is None and len(candidate.means) in candidate.scores:
            step = len(candidate.means)
            candidate.means.append(sum(candidate.scores[s] for s in range(step + 1)) / (step + 1))
            if step == self.n_splits - 1:
                candidate.state = _complete_or_failed(candidate.means[-1])
            elif self._prunes(candidate):
                candidate.state = _state("PRUNED")
                self._cancel(list(candidate.running))
                candidate.running.clear()
            elif step == 0:
                self._send(candidate, range(1, self.n_splits))

    def _prunes(self, candidate: Candidate) -> bool:
        """The pruner's verdict, against the trials told before the candidate was asked. A fold
        that failed (its score is error_score's NaN) is not pruned on: the candidate runs every
        fold and shows in cv_results_ with its errors, as in scikit-learn."""
        if self.pruner is None or math.isnan(candidate.means[-1]):
            return False
        import optuna

        if candidate.told_before not in self._histories:
            history = optuna.create_study(direction="maximize")
            history.add_trials(self.study.get_trials(deepcopy=False)[: candidate.told_before])
            self._histories[candidate.told_before] = history
            # Those of decided candidates go: a later candidate was told as much or more.
            needed = min(c.told_before for c in self.candidates if c.state is None)
            self._histories = {told: kept for told, kept in self._histories.items() if told >= needed}
        now = optuna.trial.create_trial(
            state=_state("RUNNING"), params=candidate.trial.params, distributions=self.distributions,
            intermediate_values=dict(enumerate(candidate.means)),
        )  # fmt: skip
        return bool(self.pruner.prune(self._histories[candidate.told_before], now))

    def _tell(self, candidate: Candidate) -> None:
        trial = candidate.trial
        for step, mean in enumerate(candidate.means):
            trial.report(mean, step)
        trial.set_user_attr("fold_scores", [candidate.scores.get(fold) for fold in range(self.n_splits)])
        trial.set_user_attr("fold_seconds", [candidate.seconds.get(fold) for fold in range(self.n_splits)])
        if candidate.state == _state("COMPLETE"):
            self.study.tell(trial, candidate.means[-1])
        else:
            self.study.tell(trial, state=candidate.state)


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


def _complete_or_failed(mean: float):
    return _state("FAIL") if math.isnan(mean) else _state("COMPLETE")
