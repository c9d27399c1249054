"""Serving: `fedseqrec recommend`, the Python API and `fedseqrec serve` as a real process on a loopback port."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, work_limit

from fedseqrec.serving.recommender import load_recommender


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serving") / "run"
    from fedseqrec.cli import main

    flags = [f for i, f in enumerate(TINY_FLAGS) if f != "--clients" and TINY_FLAGS[i - 1] != "--clients"]
    assert main(["train", *flags, "--epochs", "3", "--out", str(out)]) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder: Path, *extra: str):
        self.port = _free_port()
        command = [sys.executable, "-m", "fedseqrec.cli", "serve", str(folder), "--port", str(self.port), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + work_limit(60)
        while time.monotonic() < deadline:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.process.kill()
        raise AssertionError(f"the server did not start: {self.process.stderr.read()}")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=work_limit(30))
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def post(self, payload) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", "/recommend", body)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=work_limit(20))


def known_items(folder: Path, count: int = 4) -> list[str]:
    recommender = load_recommender(folder)
    return [str(t) for t in recommender.tokens[1 : count + 1]]


def test_the_python_api_and_the_command_agree(trained, cli):
    history = known_items(trained)
    api = load_recommender(trained).recommend(history, k=5)
    assert len(api.items) == 5 and not set(api.items) & set(history)  # seen items left out
    assert api.scores == sorted(api.scores, reverse=True)
    result = cli("recommend", trained, "--history", *history, "--k", "5")
    assert result.code == 0, result.err
    assert [entry["item"] for entry in json.loads(result.out)["items"]] == api.items
    kept = load_recommender(trained).recommend(history, k=load_recommender(trained).n_items, exclude_seen=False)
    assert set(history) <= set(kept.items)


def test_a_file_of_histories_in_and_json_lines_out(trained, cli, tmp_path):
    history = known_items(trained)
    user = next(iter(load_recommender(trained).users))
    (tmp_path / "in.jsonl").write_text(json.dumps({"history": history}) + "\n" + json.dumps({"user": user}) + "\n")
    result = cli("recommend", trained, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl")
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[0]["history"] == history and len(lines[0]["items"]) == 10 and lines[1]["user"] == user
    (tmp_path / "bad.jsonl").write_text('{"history": ["a"]}\n{"nope": 1}\n')
    result = cli("recommend", trained, "--input", tmp_path / "bad.jsonl")
    assert result.code == 2 and "bad.jsonl, line 2" in result.err


def test_recommend_refuses_a_folder_without_a_model_or_for_another_catalogue(trained, cli, tmp_path):
    result = cli("recommend", tmp_path, "--history", "x")
    assert result.code == 2 and "holds no trained model" in result.err and len(result.err.splitlines()) == 1
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.json", "model.pt"):
        (other / name).write_bytes((trained / name).read_bytes())
    config = json.loads((trained / "config.json").read_text())
    config["data"]["shop"]["items"] = 60  # another catalogue
    (other / "config.json").write_text(json.dumps(config))
    result = cli("recommend", other, "--history", "x")
    assert result.code == 2 and "another item vocabulary" in result.err and "Traceback" not in result.err


@pytest.mark.slow
def test_the_http_service(trained, tmp_path):
    server = Server(trained)
    try:
        history = known_items(trained)
        status, answer = server.post({"history": history, "k": 5})
        assert (
            status == 200
            and [e["item"] for e in answer["items"]] == load_recommender(trained).recommend(history, k=5).items
        )
        assert answer["sha256"] == server.get("/model")[1]["sha256"]
        status, batch = server.post({"histories": [history, history[:2]], "k": 3, "explain": True})
        assert status == 200 and len(batch["results"]) == 2 and "because" in batch["results"][0]["items"][0]
        status, partly = server.post({"history": [*history, "no-such-item"], "k": 3})
        assert status == 200 and partly["unknown_items"] == ["no-such-item"]
        long = server.post({"history": history * 20, "k": 3})[1]
        assert long["truncated"] == len(history) * 20 - 20  # the model's max_len is 20
        for bad in (
            b"{not json",
            {"history": ["no-such-item"]},
            {"history": []},
            {"history": history, "k": 0},
            {"history": history, "k": 10**6},
            {"k": 3},
        ):
            status, detail = server.post(bad)
            assert 400 <= status < 500 and detail.get("detail"), (bad, status, detail)
        status, _ = server.post(b"x" * 10_000_000)
        assert status == 413
        assert "/recommend" in server.get("/openapi.json")[1]["paths"]  # the OpenAPI page's schema
    finally:
        assert server.stop() == 143  # SIGTERM: graceful shutdown, the usual exit status


@pytest.mark.slow
def test_new_weights_are_picked_up_and_reported(trained, tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    for name in ("model.json", "model.pt", "config.json"):
        (folder / name).write_bytes((trained / name).read_bytes())
    server = Server(folder, "--poll", "0.2")
    try:
        before = server.get("/model")[1]
        assert before["round"] is None
        from fedseqrec.results.folder import RunFolder

        state = torch.load(folder / "model.pt", weights_only=True)
        state = {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}
        RunFolder(folder).save_model(state, {"round": 7, "valid_NDCG@10": 0.1})
        deadline = time.monotonic() + work_limit(30)
        while server.get("/model")[1]["sha256"] == before["sha256"] and time.monotonic() < deadline:
            time.sleep(0.2)
        after = server.get("/model")[1]
        assert after["sha256"] != before["sha256"] and after["round"] == 7
        assert server.post({"history": known_items(folder), "k": 3})[1]["round"] == 7
    finally:
        assert server.stop() == 143  # SIGTERM: graceful shutdown, the usual exit status


def test_explanations_are_the_score_each_history_item_holds_up(trained):
    """Leave-one-out, by hand: the drop reported for a history item is the recommended item's score with the whole
    history minus its score without that item."""
    recommender = load_recommender(trained)
    history = known_items(trained, 5)
    found = recommender.recommend(history, k=3, explain=True)
    everything = recommender.n_items
    for item, score, because in zip(found.items, found.scores, found.explanations, strict=True):
        drops = [b["score_drop"] for b in because]
        assert len(because) <= 3 and drops == sorted(drops, reverse=True) and all(d > 0 for d in drops)
        for reason in because:
            without = history[: reason["position"]] + history[reason["position"] + 1 :]
            again = recommender.recommend(without, k=everything, exclude_seen=False)
            assert score - again.scores[again.items.index(item)] == pytest.approx(reason["score_drop"], abs=1e-4)


def test_serve_on_a_busy_port_is_one_line_and_exit_2(cli, trained):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = cli("serve", trained, "--port", busy.getsockname()[1])
    assert result.code == 2 and "is in use" in result.err and "serving" not in result.out
    assert len(result.err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def service(trained):
    """The HTTP service in this process (FastAPI's test client): what a hostile request can and cannot do."""
    from fastapi.testclient import TestClient

    from fedseqrec.serving.app import make_app

    with TestClient(make_app(trained, poll_seconds=60)) as client:
        yield client


def test_a_chunked_body_over_the_limit_is_refused(service):
    """The limit holds on the bytes read, not only on what Content-Length declares (a chunked body declares none)."""
    body = b'{"history": [' + b'"x",' * 300_000 + b'"y"]}'

    def chunks():
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    response = service.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over" in response.json()["detail"]


@pytest.mark.parametrize(
    "change",
    [{"k": "5"}, {"k": True}, {"k": 2.5}, {"k": 0}, {"exclude_seen": "yes"}, {"explain": 1}],
    ids=["k string", "k bool", "k float", "k zero", "exclude_seen string", "explain int"],
)
def test_types_are_strict_and_a_refusal_never_echoes_the_input(service, trained, change):
    history = known_items(trained, 3) + ["an-item-nobody-knows"] * 2_000
    response = service.post("/recommend", json={"history": history, **change})
    assert response.status_code == 422 and "an-item-nobody-knows" not in response.text


def test_k_nan_is_refused_not_a_server_error(service, trained):
    body = json.dumps({"history": known_items(trained, 3)})[:-1] + ', "k": NaN}'
    response = service.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_k_beyond_the_unseen_items_lists_only_unseen_items_with_scores(service, trained):
    history = known_items(trained, 5)
    everything = load_recommender(trained).n_items
    found = service.post("/recommend", json={"history": history, "k": everything}).json()["items"]
    assert found and all(entry["score"] is not None for entry in found)
    items = [entry["item"] for entry in found]
    assert not set(items) & set(history) and len(items) <= everything - len(set(history))


def test_one_request_cannot_ask_for_unbounded_work(service, trained):
    histories = [known_items(trained, 3)] * 1_000
    assert service.post("/recommend", json={"histories": histories, "k": 50}).status_code == 422
    explained = service.post("/recommend", json={"histories": histories[:100], "k": 3, "explain": True})
    assert explained.status_code == 422 and "too much work" in explained.text


def test_no_response_shows_a_path_of_the_servers_disk(service, trained):
    for path in ("/model", "/health"):
        text = service.get(path).text
        assert str(trained.resolve().parent) not in text


def test_requests_that_arrive_together_share_a_forward_pass_and_keep_their_own_answers(trained):
    """What the service's model thread does under load: one forward pass for the waiting requests, each ranked with
    its own k and exclude_seen, a bad one refused alone."""
    import asyncio

    from fedseqrec.errors import UserError
    from fedseqrec.serving.app import ModelWorker

    recommender = load_recommender(trained)
    history = known_items(trained, 6)
    requests = [(history, 3, True), (history[:2], 7, False), (["no-such-item"], 3, True), (history[1:], 1, True)]
    calls = []
    original = recommender._ranked_together

    def counted(parsed, asked, words):
        calls.append(len(parsed))
        return original(parsed, asked, words)

    recommender._ranked_together = counted

    async def together():
        worker = ModelWorker()
        try:
            return await asyncio.gather(
                *(worker.recommend(recommender, h, k, seen) for h, k, seen in requests), return_exceptions=True
            )
        finally:
            worker.stop()

    answers = asyncio.run(together())
    assert calls == [3]  # the three answerable requests, in one pass
    for (h, k, seen), answer in zip(requests, answers, strict=True):
        if h == ["no-such-item"]:
            assert isinstance(answer, UserError) and "no item the model knows" in str(answer)
            continue
        alone = recommender.recommend_batch([h], k, seen)[0]
        assert answer.items == alone.items and answer.scores == pytest.approx(alone.scores, abs=1e-5)


def test_a_batch_scored_in_groups_of_similar_length_answers_each_history_as_alone(trained, monkeypatch):
    """Histories of many lengths, more than one group holds: each answer where its history was, the same as alone."""
    from fedseqrec.serving import recommender as serving

    monkeypatch.setattr(serving, "SCORED_TOGETHER", 4)
    recommender = load_recommender(trained)
    items = known_items(trained, 12)
    histories = [items[: 1 + (7 * i) % 12] for i in range(19)]
    calls = []
    original = recommender._ranked_together

    def counted(parsed, asked, words):
        calls.append(sorted(len(ids) for ids, _, _ in parsed))
        return original(parsed, asked, words)

    recommender._ranked_together = counted
    together = recommender.recommend_batch(histories, k=5)
    assert len(calls) == 4 and [n for call in calls for n in call] == sorted(len(h) for h in histories)
    for history, answer in zip(histories, together, strict=True):
        alone = recommender.recommend(history, k=5)
        assert answer.items == alone.items and answer.scores == pytest.approx(alone.scores, abs=1e-5)


def test_int8_weights_recommend_nearly_the_same_items_and_say_so(trained, cli):
    history = known_items(trained)
    exact = load_recommender(trained).recommend(history, k=10).items
    rounded = load_recommender(trained, int8=True)
    assert rounded.describe()["int8"] is True and load_recommender(trained).describe()["int8"] is False
    assert rounded.describe()["device"] == "cpu"
    assert len(set(rounded.recommend(history, k=10).items) & set(exact)) >= 8
    result = cli("recommend", trained, "--history", *history, "--int8", "--device", "cpu")
    assert result.code == 0 and len(json.loads(result.out)["items"]) == 10
