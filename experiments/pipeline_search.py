#!/usr/bin/env python
"""A search as users write them: a Pipeline (scaling, PCA, an RBF SVC) searched on a synthetic
classification problem whose size you choose, by scikit-learn's HalvingRandomSearchCV or by the
adaptive search (Optuna's TPE, with pruning: --engine adaptive).

Make the problem big enough and it needs a cluster:

    python experiments/pipeline_search.py --samples 200000 --features 100 --stack dask
    python experiments/pipeline_search.py --engine adaptive --trials 100 --stack dask
"""

import argparse

from spotsearch import experiment, plots, report
from spotsearch.cluster import cli

# Memory on this machine, by arithmetic before anything is made: the data as float64 about four
# times over (made, split, and scaled and projected in a fit), and each candidate's parameters and
# results rows.
DATA_COPIES = 4
BYTES_PER_CANDIDATE = 4096


def memory_needed(samples: int, features: int, candidates: int) -> str | None:
    """Why these sizes cannot fit in this machine's available memory, or None."""
    import psutil

    available = psutil.virtual_memory().available
    data = DATA_COPIES * 8 * samples * features
    if data > available:
        return (f"--samples {samples} x --features {features}: the data needs about {data / 2**30:,.1f} GiB of "
                f"memory, {available / 2**30:,.1f} GiB is available here")  # fmt: skip
    if candidates * BYTES_PER_CANDIDATE > available - data:
        return (f"--candidates {candidates}: their parameters and results need about "
                f"{candidates * BYTES_PER_CANDIDATE / 2**30:,.1f} GiB of memory beside the data, "
                f"{(available - data) / 2**30:,.1f} GiB is left here")  # fmt: skip
    return None


def main() -> int:
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--samples", type=cli.whole_number(100), default=5000,
        help="rows of the data set, at least 100 for a held-out part and three folds (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--features", type=cli.whole_number(2), default=40, help="columns of the data set (default: %(default)s)"
    )
    parser.add_argument(
        "--candidates", type=cli.whole_number(1), default=81, help="first-round candidates (default: %(default)s)"
    )
    parser.add_argument(
        "--engine", choices=("halving", "adaptive"), default="halving",
        help="halving: HalvingRandomSearchCV; adaptive: spotsearch's AdaptiveSearchCV (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--trials", type=cli.whole_number(1), default=60,
        help="candidates the adaptive engine tries, at most (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=cli.whole_number(0, 2**32 - 1), default=0,
        help="seed of the data, split and search (default: %(default)s)",
    )  # fmt: skip
    experiment.add_arguments(parser)
    args = parser.parse_args()
    if reason := memory_needed(args.samples, args.features, args.candidates):
        parser.error(reason)
    plotter = plots.Plotter()  # first: it loads matplotlib while Dask and scikit-learn load here

    from scipy.stats import loguniform
    from sklearn.datasets import make_classification
    from sklearn.decomposition import PCA
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401 (makes the import below work)
    from sklearn.model_selection import HalvingRandomSearchCV, train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = make_classification(
        n_samples=args.samples,
        n_features=args.features,
        n_informative=max(2, args.features // 4),
        n_redundant=args.features // 4,
        flip_y=0.05,
        random_state=args.seed,
    )
    data = train_test_split(X, y, test_size=0.2, random_state=args.seed, stratify=y)
    pipeline = Pipeline([("scale", StandardScaler()), ("pca", PCA(random_state=args.seed)), ("svc", SVC())])
    distributions = {
        # A share of the variance to keep, so that any number of features and rows works.
        "pca__n_components": [0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
        "svc__C": loguniform(1e-2, 1e3),
        "svc__gamma": loguniform(1e-4, 1e0),
    }
    title = f"{args.samples} x {args.features}: scale, PCA, SVC"
    if args.engine == "adaptive":
        from spotsearch.adaptive import AdaptiveSearchCV

        search = AdaptiveSearchCV(pipeline, distributions, n_trials=args.trials, cv=3, random_state=args.seed)
        plot = lambda run, search: plotter.study(run / report.STUDY_PLOT, search, title=title)  # noqa: E731
    else:
        search = HalvingRandomSearchCV(
            pipeline, distributions, n_candidates=args.candidates, factor=3, cv=3, random_state=args.seed
        )
        plot = lambda run, search: plotter.candidates(  # noqa: E731
            run / report.CANDIDATES_PLOT, search.cv_results_, search.best_index_, title=title
        )
    return experiment.run_search(
        args, plotter, "pipeline_search", search, data, plot=plot,
        samples=args.samples, features=args.features, seed=args.seed, engine=args.engine,
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
