"""What every experiment script does around its search: connect, show progress, report, exit.

A script builds its data and its search object (scikit-learn's or dask-ml's, unchanged), then
hands both to `run_search`, which fits it on the cluster the command line names (a local one by
default) and leaves the same results/<run>/ files whatever the search.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path

from spotsearch import cost, data_file, plots, report
from spotsearch.cluster import cli
from spotsearch.cluster.messages import ClusterError, Stopped, console
from spotsearch.cluster.waiting import NodeMeter
from spotsearch.saved_fits import IDENTITY, SavedFits, check_writable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=cli.writable_folder,
        default="results",  # a string, so that argparse checks it as it checks a given value
        help="where runs are written (default: %(default)s)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="a run's folder (or its name under --results): run only the fits it has not saved, and finish it",
    )
    data_file.add_arguments(parser)
    cli.add_arguments(parser)


def resumed_run(args: argparse.Namespace) -> Path | None:
    """The run folder `--resume` names, or None; ClusterError if it holds no saved fits, has
    finished (its summary is kept as it is), or cannot be written (found now, not after the search)."""
    if args.resume is None:
        return None
    named = Path(args.resume)
    folder = named if (named / report.SAVED_FITS).is_dir() else args.results / args.resume
    if not (folder / report.SAVED_FITS / IDENTITY).is_file():
        raise ClusterError(f"--resume: {args.resume} is not a run with saved fits (no {report.SAVED_FITS}/{IDENTITY} "
                           f"in {named} or {args.results / args.resume})")  # fmt: skip
    if report.finished(folder):
        raise ClusterError(f"--resume: {folder} has finished (its results are in {folder / report.SUMMARY}); "
                           "nothing to resume")  # fmt: skip
    check_writable(folder)
    return folder


def run_search(
    args: argparse.Namespace,
    plotter: plots.Plotter,
    experiment: str,
    search,
    data: tuple,
    *,
    plot: Callable[[Path, object], Future] | None = None,
    fit_params: dict | None = None,
    **summary,
) -> int:
    """Fit `search` on (X_train, y_train) on the cluster, evaluate it on (X_test, y_test), and
    write results/<run>/: every fit as it finishes (fits/, what `--resume` continues from), the
    CV table and the summary as soon as the search is over (nothing a plot or a report does
    afterwards can lose them), Dask's performance report, and `plot`'s figure. y_train and
    y_test may be None (a density estimator, say); `fit_params` (groups, sample_weight, routed
    metadata) go to the search's fit. `--data FILE` replaces `data` with the file's, split."""
    from distributed import performance_report
    from tqdm import tqdm

    from spotsearch.s3_data import S3Data
    from spotsearch.search import data_on_cluster, expected_fits, fit_on_cluster

    data, data_record = data_file.replaced(args, data)  # a bad file is one line, before the cluster starts
    summary.update(data_record)
    X_train, X_test, y_train, y_test = data
    fit_params = fit_params or {}
    started, record = time.perf_counter(), report.run_record(time.time())
    with ExitStack() as running:
        running.enter_context(plotter)  # first: whatever ends the run shuts its process down
        resumed = resumed_run(args)
        in_s3 = isinstance(X_train, S3Data)  # known once a worker has read it
        if resumed is not None and not in_s3:  # a run of another search or data is refused before the cluster starts
            saved = SavedFits(resumed / report.SAVED_FITS).open_for(search, X_train, y_train, fit_params)
            console(f"resuming {resumed}: {len(saved)} fits saved")
        client, where = running.enter_context(cli.connect_from_args(args))
        if in_s3:
            X_train, y_train = data_on_cluster(client, search, X_train, None, fit_params, args.timeout)
            summary["data"].update(rows=len(X_train), etag=X_train.spec["etag"], version=X_train.spec["version"])
            if resumed is not None:
                saved = SavedFits(resumed / report.SAVED_FITS).open_for(search, X_train, y_train, fit_params)
                console(f"resuming {resumed}: {len(saved)} fits saved")
        connected = time.perf_counter()
        print(f"Dask dashboard: {where.dashboard}", flush=True)
        run = resumed or report.new_run_folder(args.results, experiment, where)
        # The run is on record from now on, and says how it ended if it ends early.
        report.write_summary(run / report.SUMMARY, experiment=experiment, status="running", **record)
        running.push(lambda kind, error, _: _mark_ended_early(run, error) if kind is not None else None)
        if resumed is None:
            saved = SavedFits(run / report.SAVED_FITS).open_for(search, X_train, y_train, fit_params)
        # Inline: the report embeds Bokeh, so it opens offline and years from now.
        with (
            report.written_whole(run / report.DASK_REPORT) as dask_report,
            _unless_cluster_gone(performance_report(filename=str(dask_report), mode="inline")),
        ):
            # Worker nodes over the search phase: they come and go on an adaptive cluster.
            with (
                NodeMeter(client, lambda was, now: tqdm.write(f"worker nodes: {was} -> {now}")) as nodes,
                tqdm(total=expected_fits(search, X_train, y_train, fit_params), desc="fits", unit="fit") as bar,
            ):
                try:
                    fit_on_cluster(
                        search, X_train, y_train, client=client, on_fits=bar.update, wait_for_workers=args.timeout,
                        saved_fits=saved, **fit_params,
                    )  # fmt: skip
                except (KeyboardInterrupt, ClusterError):
                    if len(saved):
                        tqdm.write(f"{len(saved)} finished fits are saved; to run only the others: --resume {run}",
                                   file=sys.stderr)  # fmt: skip
                    raise
            searched = time.perf_counter()
            # The finished search first: what follows may fail, the search is kept.
            report.write_cv_table(run / report.CV_TABLE, search.cv_results_)
            timings = {"connect": connected - started, "search": searched - connected}
            node_use = {"peak": nodes.peak, "worker_node_hours": round(nodes.node_seconds / 3600, 4)}
            if resumed is not None:
                summary["resumed"] = {"fits_reused": saved.reused}
            fields = report.summary_fields(search, where, timings, worker_nodes=node_use, **summary)
            fields = {"experiment": experiment, "status": "running", **record, **fields}
            report.write_summary(run / report.SUMMARY, **fields)
            figure = plot(run, search) if plot and report.score_column(search) else None  # drawn while Dask writes
        tested, test_report = report.held_out(search, X_test, y_test)
        if "best_params" in fields:
            print(f"\nBest parameters: {fields['best_params']}")
        if "best_cv_score" in fields:
            print(f"Best mean CV score{' (' + fields['scored_by'] + ')' if 'scored_by' in fields else ''}: "
                  f"{fields['best_cv_score']:.4f}")  # fmt: skip
        if len(tied := fields.get("tied_for_best", [])) > 1:
            print(f"Tied for best ({len(tied)}, the first is kept as scikit-learn does): " + "; ".join(map(str, tied)))
        print(f"\n{test_report}")
        if figure is not None:
            try:
                figure.result()
            except Exception as error:
                print(f"warning: the plot was not drawn ({type(error).__name__}: {error}); results are in {run}")
    fields.update(tested)
    fields["timings_seconds"]["total"] = round(time.perf_counter() - started, 3)
    if estimate := cost.for_where(where, nodes.node_seconds, searched - connected):
        fields["cost"] = estimate
        print(cost.summary_line(estimate))
    report.write_summary(run / report.SUMMARY, **{**fields, **report.ended("finished")})
    print(f"Results in {run}")
    return 0


def _mark_ended_early(run: Path, error: BaseException) -> None:
    """Mark the run as failed (with the error's line) or interrupted (Ctrl-C, SIGTERM); the
    error goes on (None: not suppressed)."""
    if isinstance(error, (KeyboardInterrupt, Stopped)):
        report.mark_ended(run, "interrupted")
    else:
        report.mark_ended(run, "failed", error=f"{type(error).__name__}: {error}")


@contextmanager
def _unless_cluster_gone(context) -> Iterator[None]:
    """`context` (Dask's performance report) around the block, but not closed when the block ends
    with the cluster gone for good (a ClusterError: ended at its cost cap, or not back in time):
    closing it asks the scheduler, and would wait for one until the client's timeout."""
    context.__enter__()
    try:
        yield
    except ClusterError:
        raise
    except BaseException:
        if not context.__exit__(*sys.exc_info()):
            raise
    else:
        context.__exit__(None, None, None)
