"""How ClusterBackend (joblib_backend.py) takes finished fits' results: all those finished so far
in one request, where joblib's own collector asks the scheduler once per fit (on many slots the
results then came back slower than the fits ended)."""

from __future__ import annotations

import asyncio

from distributed.client import CancelledError

from spotsearch.upstream import outcome


class Collector:
    """joblib's Dask backend's collector (`_collect`), replaced; mixed into ClusterBackend."""

    async def _collect(self):
        """joblib's collector, taking the results of every fit finished so far in one request:
        joblib's asks the scheduler once per fit, and on many slots the results then come
        back slower than the fits end."""
        while self._continue:
            async for first in self.waiting_futures:
                ready = [first, *self.waiting_futures.next_batch(block=False)]
                finished = [future for future in ready if future.status == "finished"]
                values = await self._gathered(finished)
                for future in ready:
                    out = await self._outcome(future, values)
                    result, callback = self._results.pop(future, None), self._callbacks.pop(future, None)
                    if result is None:  # forgotten by an abort meanwhile
                        continue
                    if future.status == "error":
                        result.set_exception(out[1])
                        # A task that failed outside its fits (its calls could not be loaded on the
                        # worker, say): joblib's own collector never tells the search, which then
                        # waits for ever. Given the error, joblib raises it in the search's thread.
                        callback(out[1])
                    else:
                        result.set_result(out)
                        callback(out)
            await asyncio.sleep(0.01)

    async def _gathered(self, finished: list) -> dict:
        """The results of `finished`, by future; none if one was lost meanwhile (its worker, or the
        scheduler: the request would wait for it as long as the client's connection timeout)."""
        gathering = asyncio.ensure_future(self.client.gather(finished, asynchronous=True))
        while not gathering.done():
            await asyncio.wait([gathering], timeout=0.1)
            if self.client.status != "running" or any(future.status != "finished" for future in finished):
                gathering.cancel()
                return {}
        if gathering.exception() is not None:
            return {}  # each is taken on its own (`_outcome`), as joblib does
        return dict(zip(finished, gathering.result(), strict=True))

    @staticmethod
    async def _outcome(future, values: dict):
        """A fit's result, or what joblib's collector gets for an error: (type, exception,
        traceback); a cancelled fit (a lost scheduler) gives its CancelledError, as joblib's."""
        if future in values:
            return values[future]
        try:
            return await outcome(future)
        except (CancelledError, asyncio.CancelledError) as cancelled:
            return cancelled
        except Exception as error:  # never the collector's end: the search would wait for ever
            return error  # joblib raises an exception given as a batch's outcome
