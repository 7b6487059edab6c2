"""What AdaptiveSearchCV draws from (experiments/spotsearch/search_space.py)."""

from __future__ import annotations

import pytest


def test_the_search_space_takes_what_randomized_search_cv_takes():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from scipy.stats import loguniform, norm, randint, uniform
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    from spotsearch.search_space import optuna_space

    scalers = [StandardScaler(), MinMaxScaler(), None]
    space, decode = optuna_space(
        {"C": loguniform(1e-2, 1e3), "tol": uniform(0.1, 0.5), "depth": randint(2, 6), "kernel": ["rbf", "poly"],
         "scale": scalers, "own": IntDistribution(1, 3)}
    )  # fmt: skip
    assert space["C"] == FloatDistribution(1e-2, 1e3, log=True)
    assert space["tol"] == FloatDistribution(0.1, 0.6)
    assert space["depth"] == IntDistribution(2, 5), "randint's high is left out, Optuna's is not"
    assert space["kernel"] == CategoricalDistribution(["rbf", "poly"])
    assert space["scale"] == CategoricalDistribution([0, 1, 2]), "estimators are stored by position"
    assert space["own"] == IntDistribution(1, 3)
    candidate = decode({"C": 1.0, "tol": 0.2, "depth": 3, "kernel": "rbf", "scale": 1, "own": 2})
    assert candidate["scale"] is scalers[1] and candidate["kernel"] == "rbf"
    with pytest.raises(ValueError, match="x: scipy's norm has no Optuna counterpart"):
        optuna_space({"x": norm()})


@pytest.mark.parametrize("given", [{}, [("C", [1, 2])], None])
def test_a_search_space_that_is_not_a_non_empty_dict_is_refused_in_one_line(given):
    from spotsearch.search_space import optuna_space

    with pytest.raises(ValueError, match=r"^AdaptiveSearchCV: param_distributions must be a non-empty dict, not "):
        optuna_space(given)


def test_plain_choices_none_among_them_are_kept_as_they_are_and_reciprocal_is_log_uniform():
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from scipy.stats import reciprocal

    from spotsearch.search_space import optuna_space

    space, decode = optuna_space({"class_weight": [None, "balanced"], "alpha": reciprocal(1e-4, 1e-1)})
    assert space["class_weight"] == CategoricalDistribution([None, "balanced"])
    assert space["alpha"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert decode({"class_weight": None, "alpha": 0.01}) == {"class_weight": None, "alpha": 0.01}
