"""Where an experiment runs: a local Dask cluster by default, or a deployed one over mutual TLS.

In a notebook or a script of your own::

    from spotsearch.cluster.connect import connect

    with connect(stack="dask") as (client, where):  # or connect() for a local cluster
        ...

An experiment script adds the command-line layer (`cli`): the flags, and problems a user can
fix (no outputs file, unknown stack, unreachable scheduler, TLS rejected, too few workers,
mismatched versions) as one line on stderr with exit status 2. Each module has one job:

- `messages`: ClusterError (a problem the user can fix, in one line) and the console;
- `outputs`: the stack's outputs file, and keeping it private;
- `tls_files`: the client's TLS material as files, checked, as Dask's Security;
- `waiting`: reaching the scheduler, waiting for worker nodes, metering them;
- `versions`: the client's packages against the cluster's, and stale node code;
- `forwarder`: the dashboard's local link, through the scheduler node's TLS gateway;
- `polling`: a background thread that looks at the cluster at a steady pace;
- `connect`: the connected Client, local or remote;
- `cli`: the flags, and the exit status of an experiment.
"""
