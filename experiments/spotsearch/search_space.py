"""What AdaptiveSearchCV draws candidates from: Optuna's distributions, from what a user gives
RandomizedSearchCV too (lists of choices, scipy's loguniform, uniform and randint)."""

from __future__ import annotations

from collections.abc import Callable


def optuna_space(param_distributions: dict) -> tuple[dict, Callable[[dict], dict]]:
    """Optuna's distributions for `param_distributions`, and the function that turns a trial's
    params into the candidate's. Choices Optuna cannot store (an estimator, a function) are
    stored by their position in the list."""
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(param_distributions, dict) or not param_distributions:
        raise ValueError(f"AdaptiveSearchCV: param_distributions must be a non-empty dict, not {param_distributions!r}")
    space, by_position = {}, {}
    for name, drawn in param_distributions.items():
        if isinstance(drawn, BaseDistribution):
            space[name] = drawn
        elif isinstance(drawn, (list, tuple)) and drawn:
            if all(choice is None or type(choice) in (bool, int, float, str) for choice in drawn):
                space[name] = CategoricalDistribution(list(drawn))
            else:
                space[name], by_position[name] = CategoricalDistribution(list(range(len(drawn)))), list(drawn)
        elif hasattr(drawn, "dist") and hasattr(drawn, "support"):  # scipy.stats, frozen
            low, high = (float(bound) for bound in drawn.support())
            kind = getattr(drawn.dist, "name", "")
            if kind in ("loguniform", "reciprocal"):
                space[name] = FloatDistribution(low, high, log=True)
            elif kind == "uniform":
                space[name] = FloatDistribution(low, high)
            elif kind == "randint":
                space[name] = IntDistribution(int(low), int(high))
            else:
                raise ValueError(f"AdaptiveSearchCV: {name}: scipy's {kind} has no Optuna counterpart; give "
                                 "an optuna.distributions one, a list, or loguniform, uniform or randint")  # fmt: skip
        else:
            raise ValueError(f"AdaptiveSearchCV: {name}: {drawn!r} is neither a list of choices, an Optuna "
                             "distribution nor scipy's loguniform, uniform or randint")  # fmt: skip

    def decode(params: dict) -> dict:
        return {name: by_position[name][params[name]] if name in by_position else params[name] for name in space}

    return space, decode
