"""What runs on the cluster's nodes beside Dask, from the image (importable there as `dask_node`).

- `trust`: a scheduler preload that limits a worker's certificate to what workers do;
- `idle_shutdown`: a scheduler preload that ends the cluster when nobody uses it;
- `worker_autoscaler`: the scheduler node's daemon that sizes the worker group to Dask's work;
- `gateway`: the scheduler node's mutual-TLS gateway in front of the dashboard and JupyterLab;
- `spot_watcher`: every node's watcher for spot interruption notices;
- `tls`: the node's TLS files (one folder, mounted read-only into every container).

Nothing here imports the laptop's code (`experiments/`): the nodes run this package alone.
"""
