"""The HTTP JSON service of `fedseqrec serve`: FastAPI on uvicorn, with its OpenAPI page at ``/docs``.

- ``POST /recommend`` — ``{"history": [...]}`` or ``{"histories": [[...], ...]}``, ``k``, ``exclude_seen``, ``explain``,
  and for a query-aware model (``--task search``) the search's words: ``query`` (or ``queries``, one per history);
- ``POST /ads`` — ``{"history": [...], "ads": [...]}``: an ad model's (``--task ctr``) click and purchase
  probabilities for each ad;
- ``GET /health`` — alive, and which round answers;
- ``GET /model`` — which weights (their SHA-256), which round, and the privacy report's ε they carry.

Pointed at the run folder of a federation that is still running, a background thread watches its weights file and
loads each new one beside the serving model, then swaps one reference: a request uses the model it started with,
so none is dropped and each response names the weights and the round that answered. Inputs are bounded: the body
size (413), the batch size and ``k`` (422), histories with no known item (422); unknown items are ignored and listed.

The model works on one thread of its own (:class:`ModelWorker`), never on the event loop, and single-history
requests that arrive while it is busy are answered by its next forward pass together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fedseqrec.errors import UserError
from fedseqrec.serving.recommender import Recommender, load_recommender

MAX_BODY = 1_000_000  # bytes
MAX_BATCH = 1_000  # histories a request
MAX_HISTORY = 10_000  # items a history (the model keeps its most recent max_len)


MAX_ITEMS = 10_000  # items a response lists (histories × k)
MAX_EXPLAINED = 20  # histories a request may ask to explain (each costs one forward pass per history item)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "5" is not a number and "yes" not a boolean

    history: list[str] | None = Field(None, min_length=1, max_length=MAX_HISTORY, description="items, oldest first")
    histories: list[list[str]] | None = Field(None, min_length=1, max_length=MAX_BATCH, description="a batch")
    k: int = Field(10, ge=1, le=MAX_ITEMS, description="items to recommend (at most those not yet seen)")
    exclude_seen: bool = Field(True, description="never recommend an item of the history")
    explain: bool = Field(False, description="per item, the history items whose removal lowers its score most")
    query: str | None = Field(None, max_length=1_000, description="a search's words (query-aware models)")
    queries: list[str | None] | None = Field(None, max_length=MAX_BATCH, description="with histories: one each")


class AdsRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    history: list[str] = Field(..., min_length=1, max_length=MAX_HISTORY, description="items, oldest first")
    ads: list[str] = Field(..., min_length=1, max_length=MAX_BATCH, description="ads to score (--task ctr models)")


class ModelHolder:
    """The serving model, and the thread that swaps in new weights when the folder's weights file changes."""

    def __init__(
        self,
        folder: Path,
        weights: str,
        poll_seconds: float,
        warn: Callable[[str], None] = print,
        data: str | None = None,
        device: str = "cpu",
        int8: bool = False,
    ):
        self.folder, self.weights, self.poll_seconds, self.warn = Path(folder), weights, poll_seconds, warn
        # --data: where the run's data is now; --device, --int8: how the model scores
        self.load = functools.partial(load_recommender, folder, weights, data, device=device, int8=int8)
        self.current: Recommender = self.load()
        _out_of_the_collectors_way()
        self._seen = self._stamp()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fedseqrec-model-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _stamp(self) -> tuple[int, int] | None:
        with contextlib.suppress(OSError):
            found = (self.folder / self.weights).stat()
            return found.st_mtime_ns, found.st_size
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            stamp = self._stamp()
            if stamp is None or stamp == self._seen:
                continue
            try:
                fresh = self.load()
            except UserError as err:  # half-written or refused: keep serving the old model, try again later
                self.warn(f"new weights not loaded yet: {err}")
                continue
            self._seen = stamp
            if fresh.digest != self.current.digest:
                self.current = fresh  # one reference: requests in flight keep the model they started with
                _out_of_the_collectors_way()
                self.warn(f"serving new weights {fresh.digest[:12]} (round {fresh.describe()['round']})")


def _out_of_the_collectors_way() -> None:
    """The model and its data are hundreds of thousands of long-lived objects: a full garbage collection scanning
    them stalls every request for about 100 ms (Beauty). Frozen, the collector leaves them out (they are still freed
    when the last reference goes)."""
    gc.collect()
    gc.freeze()


class ModelWorker:
    """All of the model's work on one thread of its own, off the event loop: the loop goes on reading and answering
    HTTP while a forward pass runs, and the single-history requests that arrive meanwhile are answered together by
    the next pass (batching under load, with no added wait when requests come one at a time)."""

    def __init__(self, max_batch: int = 64):
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="fedseqrec-model")
        self.max_batch = max_batch
        self.waiting: list[tuple[Recommender, tuple[list[str], int, bool], asyncio.Future]] = []
        self.draining = False

    async def run(self, function: Callable, *args):
        """``function(*args)`` on the model's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def recommend(self, recommender: Recommender, history: list[str], k: int, exclude_seen: bool):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((recommender, (history, k, exclude_seen), future))
        if not self.draining:
            self.draining = True
            loop.create_task(self._drain())
        answer = await future
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
                try:
                    answers = await self.run(_answer_together, [(r, request) for r, request, _ in batch])
                except Exception as err:  # an unexpected failure fails these requests, never the service
                    answers = [err] * len(batch)
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():  # (its client may have gone)
                        future.set_result(answer)
        finally:
            self.draining = False

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _answer_together(batch: list[tuple[Recommender, tuple[list[str], int, bool]]]) -> list:
    """Each model's requests by one forward pass (weights swapped mid-batch: a request keeps the model it started
    with)."""
    answers: list = [None] * len(batch)
    by_model: dict[int, tuple[Recommender, list[int]]] = {}
    for i, (recommender, _) in enumerate(batch):
        by_model.setdefault(id(recommender), (recommender, []))[1].append(i)
    for recommender, indices in by_model.values():
        for i, answer in zip(indices, recommender.recommend_each([batch[i][1] for i in indices]), strict=True):
            answers[i] = answer
    return answers


class BodyLimit:
    """The body limit on the bytes actually received (a chunked body declares no length): the body is read up to
    the limit, then the request goes on with it; past the limit, 413 and nothing is parsed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
                return await response(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: a disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def make_app(
    folder: Path,
    weights: str = "model.pt",
    poll_seconds: float = 1.0,
    max_body: int = MAX_BODY,
    data: str | None = None,
    device: str = "cpu",
    int8: bool = False,
) -> FastAPI:
    holder = ModelHolder(folder, weights, poll_seconds, data=data, device=device, int8=int8)
    worker = ModelWorker()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start()
        yield
        holder.stop()
        worker.stop()

    app = FastAPI(title="fedseqrec", summary="next-item recommendations from a federated model", lifespan=lifespan)
    app.state.holder = holder

    app.add_middleware(BodyLimit, limit=max_body)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """What is wrong and where, never the input itself (a response must not echo megabytes back)."""
        problems = [{"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in err.errors()]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(UserError)
    async def refused(request: Request, err: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.get("/health")
    async def health() -> dict:
        model = holder.current.describe()
        return {"status": "ok", "round": model["round"], "sha256": model["sha256"]}

    @app.get("/model")
    async def model() -> dict:
        return holder.current.describe()

    @app.post("/ads")
    async def ads(body: AdsRequest) -> JSONResponse:
        recommender = holder.current
        described = recommender.describe()
        scored = await worker.run(recommender.score_ads, body.history, body.ads)
        return JSONResponse({"round": described["round"], "sha256": described["sha256"], **scored})

    @app.post("/recommend")
    async def recommend(body: RecommendRequest) -> JSONResponse:
        if (body.history is None) == (body.histories is None):
            raise UserError("give exactly one of history (one user) or histories (a batch)")
        recommender = holder.current  # this request's model, whatever is swapped in meanwhile
        histories = [body.history] if body.history is not None else body.histories
        queries = [body.query] if body.history is not None else body.queries
        if (body.history is not None and body.queries is not None) or (
            body.histories is not None
            and (body.query is not None or (body.queries is not None and len(body.queries) != len(histories)))
        ):
            raise UserError("query goes with history; queries (one per history) with histories")
        if len(histories) * body.k > MAX_ITEMS or (body.explain and len(histories) > MAX_EXPLAINED):
            raise UserError(
                f"too much work for one request: at most {MAX_ITEMS} items (histories × k) and {MAX_EXPLAINED} "
                "explained histories; split the batch"
            )
        described = recommender.describe()
        answer = {"round": described["round"], "sha256": described["sha256"]}
        if body.history is not None and not body.explain and body.query is None:
            found = await worker.recommend(recommender, body.history, body.k, body.exclude_seen)
            return JSONResponse({**answer, **found.to_dict()})
        found = await worker.run(
            recommender.recommend_batch, histories, body.k, body.exclude_seen, body.explain, queries
        )
        if body.history is not None:
            return JSONResponse({**answer, **found[0].to_dict()})
        return JSONResponse({**answer, "results": [f.to_dict() for f in found]})

    return app
