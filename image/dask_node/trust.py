"""Who may ask what of the scheduler: a scheduler preload that checks the role in each peer's certificate.

Every certificate of a cluster is signed by its one CA, and Dask alone lets any of them do all a
client can: run a function inside the scheduler (`run_on_scheduler`), register plugins, submit
graphs the scheduler unpickles, retire or close workers. Its wire format also lets any message
carry pickled objects, which the scheduler loads while reading, before any handler runs. A task
can read its worker's key; without this preload any task could take over the scheduler, and
with it the scheduler's key and, from its node, the scheduler role's credentials.

stacks/tls.py writes each certificate's role into its subject (the organizational unit). Then,
on every connection the scheduler process reads from, incoming or outgoing:

- client or scheduler (the laptop, JupyterLab, the node's own tools): Dask as usual;
- worker: only what a worker and its nanny send (`REQUESTS`, `STREAM`), only about workers on
  the host the connection comes from (a worker registers under its own address, retires only
  itself), a stream's messages only about the worker that registered it, no pickled object
  loaded from any message, and error replies reduced to their text. What a worker asks or
  reports holds plain values only (msgpack's own): the scheduler keeps a pickle it does not
  load (`Serialized`) as it is and hands it on, to the worker autoscaler and the laptop's node
  meter (`identity`, `scheduler_info`) and to every client (events), which would load it. The
  one exception is a failed task's exception and traceback (`task-erred`), which go only to the
  client that submitted the task, as its results do. Events a Client acts on (`print`
  writes to the terminal, `warn` unpickles) and the cost cap's are dropped. Tasks cannot open a client
  (`get_client()` inside a task is refused), and P2P shuffles, whose worker requests carry
  pickled specs, are refused: scikit-learn searches use neither;
- no role: the connection is closed.

A refusal closes the connection and logs one line naming the peer and what it asked.

    dask scheduler ... --preload dask_node.trust
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging

from distributed.comm import get_address_host
from distributed.comm.core import CommClosedError
from distributed.comm.tcp import TCP, TLS
from distributed.protocol import pickle as dask_pickle

from dask_node.cost_cap import TOPIC as COST_TOPIC
from dask_node.tls import role_of

log = logging.getLogger("distributed.scheduler.trust")
TRUSTED = ("client", "scheduler")
# What a worker process and its nanny ask of the scheduler (distributed's worker.py and
# nanny.py), each with the arguments that name workers: those must be on the peer's own host.
REQUESTS = {
    "register-worker": ("address", "nanny"),
    "register_nanny": ("address",),
    "heartbeat_worker": ("address",),
    "unregister": ("address",),
    "retire_workers": ("workers",),
    "set_resources": ("worker",),
    "who_has": (),
    "identity": (),  # read-only: a node's spot watcher finds its own workers (dask_node.spot_watcher)
    "log_event": (),
    "close": (),  # closes this connection only
}
# What a registered worker sends on its stream (the scheduler's `worker_handlers`, work
# stealing's answer, the stream's end); the scheduler applies these to the worker that registered
# the stream, whatever the message says.
STREAM = frozenset({
    "task-finished", "task-erred", "release-worker-data", "add-keys", "long-running", "reschedule",
    "keep-alive", "log-event", "worker-status-change", "request-refresh-who-has", "steal-response",
    "close-stream",
})  # fmt: skip

# Where a worker's message may hold a pickle, kept unread: Dask's own worker sends a failed
# task's exception and traceback so, for the client that submitted it.
PICKLES_ALLOWED = frozenset({("task-erred", "exception"), ("task-erred", "traceback")})
# Event topics every Client acts on (distributed's client.py `_handle_print`, `_handle_warn`),
# and the cost cap's (dask_node.cost_cap), which a search acts on: a worker may send none of them.
CLIENT_TOPICS = frozenset({"print", "warn", COST_TOPIC})

# Set while the scheduler process reads from a worker: a pickled object in that message is refused.
_reading_from_worker: contextvars.ContextVar[str | None] = contextvars.ContextVar("reading_from_worker", default=None)


class Refused(Exception):
    """A worker's message the scheduler will not act on."""


def _host(address: str) -> str:
    try:
        host = get_address_host(address)
    except ValueError:
        raise Refused(f"unreadable address {address!r}") from None
    try:
        # All of 127.0.0.0/8 is this machine, one host: a loopback cluster's workers listen on
        # 127.0.0.x and connect from 127.0.0.1.
        return "loopback" if ipaddress.ip_address(host).is_loopback else host
    except ValueError:  # a host name, compared as written
        return host


def _refuse_unless_plain(value, where: str) -> None:
    """msgpack's own values only: a pickle kept unread (`Serialized`) or anything else is refused."""
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return
    if isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _refuse_unless_plain(item, where)
    elif isinstance(value, dict):
        for name, item in value.items():
            _refuse_unless_plain(name, where)
            _refuse_unless_plain(item, where)
    else:
        raise Refused(f"a {type(value).__name__} in {where}")


def check_worker_message(message, peer: str, stream_of: str | None = None) -> None:
    """Refuse what a worker's certificate may not ask; `message` as Dask read it. `stream_of`:
    the worker that registered this connection as its stream, if it did."""
    for part in message if isinstance(message, list | tuple) else (message,):
        if not isinstance(part, dict) or "op" not in part:
            continue  # a reply, a handshake or a malformed request: Dask handles those itself
        op = part["op"]
        for field, value in part.items():
            if (op, field) not in PICKLES_ALLOWED:
                _refuse_unless_plain(value, f"{op!r} ({field})")
        if op in STREAM:
            # distributed merges the message over the stream's own worker: a `worker` in it
            # would act on another worker.
            if "worker" in part and part["worker"] != stream_of:
                raise Refused(f"{op!r} about {part['worker']} on the stream of {stream_of}")
            continue
        if op not in REQUESTS:
            raise Refused(f"{op!r} is not something a worker asks")
        if op == "retire_workers" and (part.get("workers") is None or part.get("names") is not None):
            raise Refused("'retire_workers' without naming its own workers")
        for field in REQUESTS[op]:
            value = part.get(field)
            for address in value if isinstance(value, list | tuple) else [value]:
                if address is not None and _host(str(address)) != _host(peer):
                    raise Refused(f"{op!r} about {address}, not on the host it connects from")


def _without_pickles(loads):
    def loads_checked(*args, **kwargs):
        if peer := _reading_from_worker.get():
            raise Refused(f"a pickled object from {peer}")
        return loads(*args, **kwargs)

    return loads_checked


def _reply_text_only(message):
    """A worker's error reply, rebuilt from its text: the scheduler may unpickle the exception
    (`clean_exception`) otherwise. The new one is pickled here, from a string."""
    if isinstance(message, dict) and message.get("status") in ("error", "uncaught-error"):
        text = str(message.get("exception_text", "the worker reported an error"))
        return {"status": message["status"], "exception": dask_pickle.dumps(RuntimeError(text)), "traceback": None,
                "exception_text": text, "traceback_text": ""}  # fmt: skip
    return message


def _without_client_events(message, peer: str):
    """A worker's stream batch without the events a Client acts on (a task's `distributed.print`,
    say): dropped, and logged, rather than the worker's whole stream closed."""
    if not isinstance(message, list | tuple):  # a batch reads as a tuple (msgpack, use_list=False)
        return message
    kept = []
    for part in message:
        if isinstance(part, dict) and part.get("op") == "log-event" and _topics(part) & CLIENT_TOPICS:
            log.warning("dropped an event on topic %s from %s", sorted(_topics(part) & CLIENT_TOPICS), peer)
            continue
        kept.append(part)
    return type(message)(kept)


def _topics(part: dict) -> set[str]:
    topic = part.get("topic")
    return {str(name) for name in topic} if isinstance(topic, list | tuple) else {str(topic)}


async def read(comm: TLS, deserializers=None):
    """TLS.read in the scheduler process: as Dask's, with the peer's role checked."""
    role = role_of(comm.extra_info.get("peercert"))
    if role in TRUSTED:
        return await TCP.read(comm, deserializers)
    peer = comm.peer_address
    try:
        if role != "worker":
            raise Refused("a certificate without a cluster role")
        token = _reading_from_worker.set(peer)
        try:
            message = await TCP.read(comm, deserializers)
        finally:
            _reading_from_worker.reset(token)
        message = _without_client_events(message, peer)
        check_worker_message(message, peer, getattr(comm, "trust_stream_of", None))
        if isinstance(message, dict) and message.get("op") == "log_event" and _topics(message) & CLIENT_TOPICS:
            raise Refused(f"an event on topic {sorted(_topics(message) & CLIENT_TOPICS)}")
    except Refused as refusal:
        log.warning("refused and disconnected %s (role %s): %s", peer, role, refusal)
        comm.abort()
        raise CommClosedError(f"refused by the scheduler: {refusal}") from None
    if isinstance(message, dict) and message.get("op") == "register-worker":
        comm.trust_stream_of = message.get("address")  # this connection becomes that worker's stream
    return _reply_text_only(message)


def install() -> None:
    """Check every TLS connection this process reads from (the scheduler's, in and out)."""
    TLS.read = read
    dask_pickle.loads = _without_pickles(dask_pickle.loads)


# At import, which Dask does when it builds the scheduler, before it listens: no connection
# is ever read unchecked.
install()


def dask_setup(scheduler) -> None:
    log.info("peers are checked by certificate role: clients and scheduler trusted, workers limited")
