"""A search's finished fits, kept on the laptop as they arrive: what a lost scheduler, a lost
connection or Ctrl-C cannot take away.

What is reused, and when: a saved fit stands in only for a fit that did not finish, in a search
run again after a lost connection or scheduler, or resumed (`--resume`, `saved_fits=` a folder
that holds fits). It never skips a fit the search runs: scikit-learn's successive halving
repeats a round on the same rows with `aggressive_elimination`, and plain scikit-learn runs
both; so does this, because a fit's key also counts which time, in this search, the same fit
comes (see `FitKeys`).

A fit's key is what was fitted (see `describe`): the estimator with every parameter, the
candidate, the split's rows, the scorer and the fit parameters, for scikit-learn's searches;
dask-ml's own task key (a hash of the estimator, the candidate, the split and the data) for
dask-ml's. The folder also records the search and the data its fits belong to (`search.json`),
setting by setting: a search or data that differ are refused before any work, naming what
differs, so a stale result is never reused.

A saved fit is plain data, JSON (scores, timings, the number of test samples, a fit's error
message): loading a folder executes nothing, whoever wrote it. A file that is not one of ours,
or a folder that others can write, is refused in one line before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
from pathlib import Path

from spotsearch.cluster.messages import ClusterError, console
from spotsearch.fit_keys import draws_at_random, search_identity, unrepeatable, unrepeatable_settings

IDENTITY = "search.json"
SUFFIX = ".fit"
FORMAT = 2  # 1 was pickles (refused: see `_load`)


class NotPlain(ValueError):
    """A fit's result holds something that is not plain data: kept in memory, not on disk."""


def to_plain(value) -> object:
    """A fit's result as JSON-able data that `from_plain` turns back into the same values and
    types: numbers (numpy's scalars with their dtype), strings, None, and dicts, lists and tuples
    of them. Every container is tagged, so no value is taken for another."""
    import numpy as np

    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"numpy": value.dtype.str, "value": value.item()}
    if type(value) is dict and all(type(name) is str for name in value):
        return {"dict": {name: to_plain(item) for name, item in value.items()}}
    if type(value) in (list, tuple):
        return {type(value).__name__: [to_plain(item) for item in value]}
    raise NotPlain(f"a {type(value).__name__}")


def from_plain(data) -> object:
    import numpy as np

    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is dict and len(data) == 1:
        ((tag, content),) = data.items()
        if tag == "dict" and type(content) is dict:
            return {name: from_plain(item) for name, item in content.items()}
        if tag in ("list", "tuple") and type(content) is list:
            items = [from_plain(item) for item in content]
            return items if tag == "list" else tuple(items)
    if type(data) is dict and set(data) == {"numpy", "value"}:
        dtype = np.dtype(data["numpy"])
        if dtype.kind in "biuf" and type(data["value"]) in (bool, int, float):
            return dtype.type(data["value"])
    raise NotPlain("not a saved result")


def file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32] + SUFFIX


def _one_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class SavedFits:
    """Finished fits by key, in memory and, given a folder, on disk (one small JSON file each)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._fits: dict[str, object] = {}
        self._lock = threading.Lock()
        self._earlier: set[str] = set()  # the fits an earlier run saved
        self.taken: set[str] = set()  # those this run took instead of running them
        self._not_writable = self._not_plain = self._opened = False
        # The seed a search with random_state=None runs with, drawn once per run: run again
        # (reconnected, resumed), it draws the same candidates.
        self.random_state = int.from_bytes(os.urandom(4), "little")
        self._kept: dict[str, object] = {}  # see `kept`

    def __len__(self) -> int:
        return len(self._fits)

    def open_for(self, search, X, y, fit_params: dict) -> SavedFits:
        """Check (or record) that the folder's fits are this search's, on this data, and load them.
        Refused in one line, before any work, if they are not, if a file in it is not a saved
        fit, if others can write it, or if this program cannot. Once is enough (the runner opens
        a resumed run before it starts the cluster)."""
        if self.folder is None or self._opened:
            return self
        folder = self.folder
        recorded_path = folder / IDENTITY
        if not recorded_path.is_file() and folder.exists() and any(folder.iterdir()):
            raise ClusterError(f"{folder} holds files but no {IDENTITY}: not a folder of saved fits")
        # The run folder too, before anything is made in it: who can write it can put another
        # fits/ in its place; a sticky folder (/tmp) lets nobody else rename or remove what is in it.
        if folder.parent.is_dir() and not folder.parent.stat().st_mode & stat.S_ISVTX:
            _refuse_if_others_can_write(folder.parent)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = sorted(folder.glob(f"*{SUFFIX}"))
        for path in (folder, *([recorded_path] if recorded_path.is_file() else []), *files):
            _refuse_if_others_can_write(path)
        check_writable(folder)
        identity = {"format": FORMAT, **search_identity(search, X, y, fit_params)}
        unstable = unrepeatable_settings(search)
        if recorded_path.is_file():
            recorded = _read_identity(recorded_path)
            self._refuse_if_other(recorded, identity, unstable, type(search).__name__)
            if files and (why := unrepeatable(search)):
                raise ClusterError(f"cannot resume {type(search).__name__}: {why}; set it to a number")
            self.random_state = recorded.get("random_state", self.random_state)
            self._kept = {name: value for name, value in recorded.items() if name not in {*identity, "random_state"}}
            for path in files:
                key, value = _load(path)
                self._fits[key] = value
                self._earlier.add(key)
        else:
            if unstable:
                console(f"warning: a resume of this search will run every fit again: its setting {unstable[0]} "
                        f"({_shown(search.get_params(deep=True)[unstable[0]])}) is not described the same way "
                        "twice")  # fmt: skip
            identity["random_state"] = self.random_state
            write_atomically(recorded_path, json.dumps(identity, indent=2).encode())
        self._opened = True
        return self

    def _refuse_if_other(self, recorded: dict, identity: dict, unstable: list[str], search_name: str) -> None:
        advice = "resume with the same search and data, or start a new run"
        if recorded.get("search") != identity["search"]:
            raise ClusterError(f"the saved fits in {self.folder} are of another search "
                               f"({recorded.get('search')}, not {identity['search']}); {advice}")  # fmt: skip
        for part in ("settings", "data"):
            theirs, ours = recorded.get(part, {}), identity[part]
            differs = [name for name in {**theirs, **ours} if theirs.get(name) != ours.get(name)]
            if not differs:
                continue
            if part == "settings" and (shaky := [name for name in unstable if name.split("__")[0] in differs]):
                raise ClusterError(f"cannot resume {search_name} from {self.folder}: its setting {shaky[0]} is not "
                                   "described the same way twice, so its fits cannot be found again; "
                                   "start a new run")  # fmt: skip
            what = "setting" if part == "settings" else "data:"
            raise ClusterError(f"the saved fits in {self.folder} are of another {part} "
                               f"({what} {', '.join(differs)} differs); {advice}")  # fmt: skip

    def kept(self, name: str, make):
        """A value a run decides once and keeps for its resumes (the adaptive search's
        candidates in flight): the one recorded with the folder's fits, else `make()`, recorded."""
        if name not in self._kept:
            self._kept[name] = make()
            if self.folder is not None and (self.folder / IDENTITY).is_file():
                recorded = {**_read_identity(self.folder / IDENTITY), name: self._kept[name]}
                write_atomically(self.folder / IDENTITY, json.dumps(recorded, indent=2).encode())
        return self._kept[name]

    def fixed_random_state(self, search) -> dict:
        """The parameter that makes the search draw this run's candidates, if it draws at random."""
        return {"random_state": self.random_state} if draws_at_random(search) else {}

    def __contains__(self, key: str) -> bool:
        return key in self._fits

    @property
    def reused(self) -> int:
        """How many fits saved by an earlier run this run took instead of running them."""
        return len(self.taken)

    def take(self, key: str):
        """A saved fit's result, instead of running the fit."""
        if key in self._earlier:
            with self._lock:
                self.taken.add(key)
        return self._fits[key]

    def save(self, key: str, value) -> None:
        """Keep one finished fit: in memory, and in the folder as one file written whole or not at all."""
        with self._lock:
            self._fits[key] = value
        if self.folder is None or self._not_writable:
            return
        try:
            data = json.dumps({"format": FORMAT, "key": key, "result": to_plain(value)})
        except NotPlain as error:  # kept in memory: a lost connection still reuses it, a resume runs it again
            if not self._not_plain:
                self._not_plain = True
                console(f"warning: some fits' results hold {error} and are not saved in {self.folder}; "
                        "a resume runs those again")  # fmt: skip
            return
        try:
            write_atomically(self.folder / file_name(key), data.encode())
        except OSError as error:  # a full disk, say: the search goes on, its fits kept in memory
            self._not_writable = True
            reason = error.strerror or error
            console(f"warning: fits are no longer saved in {self.folder} ({reason}); the search goes on")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_identity(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ClusterError(f"{path} cannot be read ({_one_line(error)}): not a folder of saved fits") from None
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
        raise ClusterError(f"{path} is not a record of saved fits of this version (format {FORMAT}); "
                           "start a new run")  # fmt: skip
    return recorded


def _load(path: Path) -> tuple[str, object]:
    """One saved fit, read as JSON (nothing in it runs); ClusterError, naming the file, if it is
    not one this program wrote."""
    try:
        saved = json.loads(path.read_bytes())
        if not (isinstance(saved, dict) and saved.get("format") == FORMAT and isinstance(saved.get("key"), str)):
            raise NotPlain(f"not a saved fit of format {FORMAT}")
        if path.name != file_name(saved["key"]):
            raise NotPlain("its name is not its key's")
        return saved["key"], from_plain(saved.get("result", {}))
    # json's errors and NotPlain are ValueErrors; numpy refuses an unknown dtype with a TypeError.
    except (OSError, ValueError, TypeError) as error:
        raise ClusterError(f"{path} is not a fit this program saved ({_one_line(error)}); move it out of "
                           f"{path.parent} to resume, or start a new run") from None  # fmt: skip


def _refuse_if_others_can_write(path: Path) -> None:
    """Saved fits are only taken from a folder that only the user can change: others could put
    their results in it (data only, never code: still not the user's results)."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ClusterError(f"{path} belongs to another user (uid {info.st_uid}); saved fits are only taken from "
                           "your own folders: copy the run, or start a new one")  # fmt: skip
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ClusterError(f"{path} is writable by other users (mode {stat.filemode(info.st_mode)}); saved fits "
                           f"are only taken from a folder only you can write: chmod go-w {path}")  # fmt: skip


def check_writable(folder: Path) -> None:
    """Checked by writing: permissions, a read-only disk and root's exemptions all tell."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".saving-")
    except OSError as error:
        raise ClusterError(f"cannot write in {folder} ({error.strerror or error}); "
                           "make it writable, or start a new run elsewhere") from None  # fmt: skip
    os.close(handle)
    os.unlink(probe)


def write_atomically(path: Path, data: bytes) -> None:
    """A file that is either absent or complete, whatever stops the program (the rename is atomic)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".saving-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
