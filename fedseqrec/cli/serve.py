"""``fedseqrec recommend`` (top-K items from a trained model) and ``fedseqrec serve`` (the same over HTTP)."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
from pathlib import Path

from fedseqrec.cli.common import add_command, add_data_location, add_device_option
from fedseqrec.errors import UserError


def cmd_recommend(args: argparse.Namespace) -> int:
    """top-K items for a user, a history or a file of histories

    From the folder `fedseqrec train` or `simulate` wrote: the next items for a user of the data the model was
    trained on (--user), for a history given as item tokens (--history, oldest first), or for every line of a JSON
    lines file (--input; each line {"history": [...]} or {"user": "..."}, optionally with "query"; one JSON line out
    per line in). Items are the data's own tokens, with their scores; items of the history are left out unless
    --keep-seen. A query-aware model (--task search) ranks the results of a search: --query "words"; an ad model
    (--task ctr) gives the click and purchase probabilities of ads shown next: --ads ITEM ....
    """
    from fedseqrec.serving.recommender import load_recommender  # torch: not for building the parsers

    given = [args.user is not None, args.history is not None, args.input is not None]
    if sum(given) != 1:
        raise UserError("give one of --user, --history or --input")
    recommender = load_recommender(Path(args.run), args.weights, args.data, device=args.device, int8=args.int8)
    if args.ads is not None:
        if args.input is not None:
            raise UserError("--ads scores one history's ads: give --user or --history")
        history = recommender.history_of(args.user) if args.user is not None else args.history
        print(json.dumps({**_asked(args), **recommender.score_ads(history, args.ads)}))
        return 0
    options = {"k": args.k, "exclude_seen": not args.keep_seen, "explain": args.explain}
    if args.input is None:
        history = recommender.history_of(args.user) if args.user is not None else args.history
        found = recommender.recommend(history, **options, query=args.query).to_dict()
        print(json.dumps({**_asked(args), **found}))
        return 0
    if args.query is not None:
        raise UserError('--query is for one request; with --input give each line its own "query"')
    requests = _read_lines(Path(args.input))
    histories = [recommender.history_of(r["user"]) if "user" in r else r["history"] for r in requests]
    queries = [r.get("query") for r in requests]
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115 (stdout is not ours to close)
    try:
        for start in range(0, len(histories), 256):
            part = slice(start, start + 256)
            for request, found in zip(
                requests[part],
                recommender.recommend_batch(histories[part], **options, queries=queries[part]),
                strict=True,
            ):
                out.write(json.dumps({**request, **found.to_dict()}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _asked(args: argparse.Namespace) -> dict:
    asked = {"user": args.user} if args.user is not None else {"history": args.history}
    return asked if args.query is None else {**asked, "query": args.query}


def _read_lines(path: Path) -> list[dict]:
    requests = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--input {path}: unreadable ({err})") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as err:
            raise UserError(f"{path}, line {number}: not JSON ({err})") from err
        valid = isinstance(request, dict) and (
            isinstance(request.get("user"), str)
            or (isinstance(request.get("history"), list) and all(isinstance(i, str | int) for i in request["history"]))
        )
        if not valid or not isinstance(request.get("query", ""), str):
            raise UserError(
                f'{path}, line {number}: expected {{"history": [item, ...]}} or {{"user": "..."}}, '
                'optionally with {"query": "words"}'
            )
        if "history" in request:
            request["history"] = [str(i) for i in request["history"]]
        requests.append(request)
    return requests


def cmd_serve(args: argparse.Namespace) -> int:
    """an HTTP JSON service of recommendations (FastAPI + uvicorn)

    POST /recommend ({"history": [...]} or {"histories": [[...], ...]}, "k", "exclude_seen", "explain", and for a
    query-aware model "query" or "queries"), GET /health,
    GET /model (which weights, which round, which ε), OpenAPI page at /docs. Pointed at the run folder of a
    federation that is still running, it picks up each new best model without dropping a request. Stops on Ctrl-C
    or SIGTERM.
    """
    import uvicorn  # (its import and the model's torch: not for building the parsers)

    from fedseqrec.serving.app import make_app

    _check_port_free(args.host, args.port)
    app = make_app(Path(args.run), args.weights, args.poll, data=args.data, device=args.device, int8=args.int8)
    described = app.state.holder.current.describe()
    which = "" if described["round"] is None else f" (round {described['round']})"  # a train run has no rounds
    print(
        f"serving {described['model']} from {Path(args.run).resolve()}{which} on "
        f"http://{args.host}:{args.port} (OpenAPI: /docs)",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler found at start:
    # ours makes that the usual exit status 143, with nothing printed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """A busy port is the user's to change: one line, before the model is loaded or anything is printed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address to listen on ({err.strerror})") from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(
                f"--port {port}: {host}:{port} is in use or not allowed ({err.strerror}); choose another --port"
            ) from err


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="a folder `fedseqrec train` or `simulate` wrote")
    parser.add_argument("--weights", default="model.pt", help="model.pt (the best, default) or model_last.pt")
    add_data_location(parser)
    add_device_option(parser)
    parser.add_argument(
        "--int8",
        action="store_true",
        help="score with int8 weights in the linear and recurrent layers (dynamic quantization, CPU): faster, "
        "scores off by the weights' rounding (benchmarks/serving.py measures the ranking it costs)",
    )


def register(commands: argparse._SubParsersAction) -> None:
    recommend = add_command(commands, "recommend", cmd_recommend)
    _common(recommend)
    recommend.add_argument("--user", default=None, help="a user of the data the model was trained on")
    recommend.add_argument("--history", nargs="+", default=None, metavar="ITEM", help="item tokens, oldest first")
    recommend.add_argument("--input", default=None, metavar="FILE", help="JSON lines of histories or users")
    recommend.add_argument("--output", default=None, metavar="FILE", help="with --input: where to write (stdout)")
    recommend.add_argument("--k", type=int, default=10, help="items to recommend (default 10)")
    recommend.add_argument("--keep-seen", action="store_true", help="items of the history may be recommended")
    recommend.add_argument("--explain", action="store_true", help="the history items behind each recommendation")
    recommend.add_argument("--query", default=None, metavar="WORDS", help="a search's words (query-aware models)")
    recommend.add_argument(
        "--ads",
        nargs="+",
        default=None,
        metavar="ITEM",
        help="ads to score: click and purchase probabilities (ad models, --task ctr)",
    )
    serve = add_command(commands, "serve", cmd_serve)
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--poll", type=float, default=1.0, help="seconds between checks for new weights (default 1)")
