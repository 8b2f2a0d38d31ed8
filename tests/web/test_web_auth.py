"""Nobody in without the token: every API route answers 401 without it, the browser signs in through
the printed URL (HttpOnly SameSite=Strict cookie), another OS user cannot start jobs or push, Host and
Origin checks, and the model_name rule (Hub ids, the server's --model list, its state folder)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import stat
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from web_support import ACCESS_TOKEN, AUTH, JSONL_ROWS, assert_error, files_containing, stub_serve_command

from deepsynth.training.errors import ConfigError
from deepsynth.web.app import create_app
from deepsynth.web.server import add_serve_arguments, check_bind, is_loopback, read_token_file, run_serve

OTHER_TOKEN = "another-servers-token-9Xc2Lm"
# What an attacker would send: a job that pushes to their repository with the server owner's Hub token.
ATTACK_JOB = {"dataset_id": "sample", "push_to_hub": True, "hub_model_id": "attacker/x", "num_epochs": 1}


def api_operations(client: TestClient) -> list[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    return [(method.upper(), path.replace("{job_id}", "abc123").replace("{dataset_id}", "sample"))
            for path, operations in schema["paths"].items() for method in operations]


# --------------------------------------------------------------------------------------- the token


def test_every_api_route_answers_401_without_the_token(state_dir):
    anonymous = TestClient(create_app(state_dir, access_token=ACCESS_TOKEN))
    operations = api_operations(anonymous)  # /openapi.json is open: the same document for every install
    assert len(operations) >= 18 and ("GET", "/api/health") in operations
    other = TestClient(create_app(state_dir / "other", access_token=OTHER_TOKEN))
    other_cookie = other.post("/api/session", headers={"Authorization": f"Bearer {OTHER_TOKEN}"}).cookies
    attempts = [{}, {"headers": {"Authorization": "Bearer wrong-token"}},
                {"headers": {"Authorization": f"Bearer {ACCESS_TOKEN[:-1]}"}},
                {"headers": {"Authorization": f"Basic {ACCESS_TOKEN}"}},
                {"headers": {"Cookie": "; ".join(f"{k}={v}" for k, v in other_cookie.items())}}]
    for method, path in operations:
        for attempt in attempts:
            body = {"json": ATTACK_JOB} if method == "POST" else {}
            assert_error(anonymous.request(method, path, **body, **attempt), 401, "access token")
    # Deny by default: paths and methods no route serves are refused the same way (no 404/405 hints).
    for method, path in (("GET", "/api/nothing"), ("GET", "//api/jobs"), ("GET", "/admin"), ("PUT", "/api/jobs"),
                         ("OPTIONS", "/api/jobs"), ("GET", "/api/../api/jobs")):
        assert_error(anonymous.request(method, path), 401)
    # The body is never looked at without the token: no size or validation answer either.
    huge = anonymous.post("/api/jobs", content=b"{" + b" " * (2 * 2**20) + b"}",
                          headers={"content-type": "application/json"})
    assert_error(huge, 401)
    assert_error(anonymous.post("/api/datasets", files={"file": ("a.jsonl", JSONL_ROWS)}), 401)
    assert not list((state_dir / "datasets").iterdir()) and not list((state_dir / "jobs").iterdir())
    # Open: the assets and the sign-in page (which holds no secret).
    assert anonymous.get("/static/app.js").status_code == 200
    login = anonymous.get("/")
    assert login.status_code == 401 and 'id="access-token"' in login.text and ACCESS_TOKEN not in login.text
    # With the token, scripts get in.
    authorized = TestClient(anonymous.app, headers=AUTH)
    assert authorized.get("/api/jobs").json() == {"jobs": []}
    assert authorized.get("/api/health").json()["ok"] is True


def test_browser_signs_in_with_the_token_url_into_an_httponly_strict_cookie(state_dir):
    app = create_app(state_dir, access_token=ACCESS_TOKEN)
    browser = TestClient(app, follow_redirects=False)
    response = browser.get(f"/?token={ACCESS_TOKEN}")
    # The token leaves the address bar at once; the cookie holds a value derived from it.
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert ACCESS_TOKEN not in cookie
    assert response.headers["referrer-policy"] == "no-referrer"
    assert browser.get("/").status_code == 200 and 'id="start-job"' in browser.get("/").text
    assert browser.get("/api/jobs").status_code == 200
    assert browser.post("/api/jobs", json={"dataset_id": "sample", "num_epochs": 1}).status_code == 201

    # A wrong token signs nobody in; the sign-in form's exchange needs the token too.
    stranger = TestClient(app, follow_redirects=False)
    assert stranger.get("/?token=nope").status_code == 401 and not stranger.cookies
    assert_error(stranger.post("/api/session", headers={"Authorization": "Bearer nope"}), 401)
    exchanged = stranger.post("/api/session", headers=AUTH)
    assert exchanged.status_code == 200 and "httponly" in exchanged.headers["set-cookie"].lower()
    assert stranger.get("/api/datasets").status_code == 200

    # Two servers on one host (cookies ignore ports): each has its own cookie, neither opens the other.
    other_app = create_app(state_dir / "other", access_token=OTHER_TOKEN)
    other = TestClient(other_app, follow_redirects=False)
    other.get(f"/?token={OTHER_TOKEN}")
    assert set(other.cookies) and set(other.cookies).isdisjoint(browser.cookies)
    both = TestClient(other_app, cookies={**dict(browser.cookies)})
    assert_error(both.get("/api/jobs"), 401)


def test_dns_rebinding_and_cross_site_requests_are_refused(state_dir):
    client = TestClient(create_app(state_dir, access_token=ACCESS_TOKEN, allowed_hosts=["127.0.0.1", "localhost"]),
                        base_url="http://127.0.0.1:8000", follow_redirects=False)
    client.get(f"/?token={ACCESS_TOKEN}")  # a signed-in browser: the cookie alone must not be enough
    assert client.get("/api/datasets").status_code == 200
    assert_error(client.get("/api/datasets", headers={"Host": "evil.example"}), 403, "host")
    assert_error(client.post("/api/jobs", json={"dataset_id": "sample"}, headers={"Origin": "http://evil.example"}),
                 403, "origin")
    assert_error(client.post("/api/datasets", files={"file": ("a.jsonl", JSONL_ROWS)}, headers={"Origin": "null"}),
                 403, "origin")
    assert client.get("/api/jobs").json() == {"jobs": []}
    ok = client.post("/api/jobs", json={"dataset_id": "sample"}, headers={"Origin": "http://127.0.0.1:8000"})
    assert ok.status_code == 201, ok.text


def test_the_app_cannot_be_built_without_a_token(state_dir):
    with pytest.raises(TypeError):
        create_app(state_dir)  # type: ignore[call-arg]
    for weak in ("", "short", None):
        with pytest.raises(ConfigError, match="access_token"):
            create_app(state_dir, access_token=weak)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- real servers


def _status(port: int, method: str, path: str, body: dict | None = None, token: str | None = None) -> int:
    """One request with the standard library only (also usable after switching to another user)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def _as_user(uid: int, gid: int, action) -> dict:
    """Run ``action()`` in a forked child that has become ``uid``:``gid``; returns its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the other user, act, report, and leave without cleanup handlers
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = {"uid": os.getuid(), **action()}
            code = 0
        except BaseException as error:  # reported to the parent, which fails the test
            result = {"child_error": repr(error)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _other_users_attack(port: int, job_id: str, server_pid: int, token: str) -> dict:
    cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes()
    try:
        Path(f"/proc/{server_pid}/environ").read_bytes()
        environ_readable = True
    except PermissionError:
        environ_readable = False
    return {
        "create": _status(port, "POST", "/api/jobs", ATTACK_JOB),
        "push": _status(port, "POST", f"/api/jobs/{job_id}/push", {"repo_id": "attacker/x"}),
        "cancel": _status(port, "POST", f"/api/jobs/{job_id}/cancel"),
        "list": _status(port, "GET", "/api/jobs"),
        "guessed": _status(port, "POST", "/api/jobs", ATTACK_JOB, token="guessed-" + "x" * 40),
        "token_in_cmdline": token.encode() in cmdline,
        "environ_readable": environ_readable,
    }


def test_a_real_server_refuses_other_local_users_and_scripts_without_the_token(serve_process, state_dir):
    with serve_process(str(state_dir), command=stub_serve_command()) as server:
        token, port = server.token, server.port
        # Its output is a pipe, not a terminal: the address without the token, the token in a private file.
        assert server.printed_url == f"http://127.0.0.1:{port}/" and len(token) >= 40
        assert server.token_file == state_dir / "access-token"
        assert stat.S_IMODE(server.token_file.stat().st_mode) == 0o600
        # Without the token a local process can neither start a pushing job nor push a finished one.
        assert _status(port, "POST", "/api/jobs", ATTACK_JOB) == 401
        job = server.http.post("/api/jobs", json={"dataset_id": "sample"}).json()
        job = server.wait_job(job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=60)
        assert job["status"] == "succeeded" and job["has_adapter"], job
        assert _status(port, "POST", f"/api/jobs/{job['id']}/push", {"repo_id": "attacker/x"}) == 401
        assert _status(port, "GET", "/api/health") == 401
        assert _status(port, "GET", "/api/jobs", token=token) == 200
        # The browser's way in: the printed URL.
        signed_in = httpx.get(server.login_url, follow_redirects=False)
        assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()

        if os.geteuid() == 0:  # CI runs as root: become `nobody` and try again, from another user
            attack = _as_user(65534, 65534, lambda: _other_users_attack(port, job["id"], server.process.pid, token))
            assert attack == {"uid": 65534, "create": 401, "push": 401, "cancel": 401, "list": 401, "guessed": 401,
                              "token_in_cmdline": False, "environ_readable": False}, attack
        jobs = server.http.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in jobs] == [job["id"]] and jobs[0]["status"] == "succeeded"
        # The token is in no answer, and (once the server stopped) in no file.
        answers = [server.http.get(path).text for path in ("/api/health", "/api/jobs", f"/api/jobs/{job['id']}",
                                                           "/api/hub", "/openapi.json", "/")]
    assert server.returncode == 0, server.output
    assert token not in server.output, server.output
    assert not [text for text in answers if token in text]
    assert files_containing(state_dir, token) == []  # the token file went with the server
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700  # other users cannot read its data either

    # A new launch, a new token: the old one opens nothing.
    with serve_process(str(state_dir), command=stub_serve_command()) as again:
        assert again.token != token
        assert _status(again.port, "GET", "/api/jobs", token=token) == 401
        assert _status(again.port, "GET", "/api/jobs", token=again.token) == 200
    if os.geteuid() != 0:
        pytest.skip("the requests as another OS user need root (CI runs as root); everything else passed")


def test_serve_with_a_configured_token_prints_the_address_without_it(serve_process, state_dir, tmp_path):
    secret = "configured-access-token-42xyz"
    with serve_process(env={"DEEPSYNTH_ACCESS_TOKEN": secret}, token=secret) as server:
        assert server.login_url == f"http://127.0.0.1:{server.port}/"
        assert _status(server.port, "GET", "/api/jobs") == 401
        assert server.http.get("/api/jobs").json() == {"jobs": []}
        assert httpx.get(f"{server.url}/?token={secret}", follow_redirects=False).status_code == 303
        assert (state_dir / "jobs.sqlite3").is_file()
    assert server.returncode == 0, server.output
    # Not echoed at start-up, and hidden in the access log line of the sign-in request.
    assert secret not in server.output and "DEEPSYNTH_ACCESS_TOKEN" in server.output
    assert "GET /?token=[hidden]" in server.output, server.output


def test_serve_options_token_file_and_non_loopback_refusal(monkeypatch, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-long-enough-access-token")
    with pytest.raises(ConfigError, match="host"):
        check_bind("0.0.0.0", None)  # a random per-launch token is for loopback only
    with pytest.raises(ConfigError, match="16 characters"):
        check_bind("127.0.0.1", "short")

    token_file = tmp_path / "token"
    token_file.write_text("file-access-token-0123456789\n")
    token_file.chmod(0o600)
    assert read_token_file(token_file) == "file-access-token-0123456789"
    for mode in (0o644, 0o640, 0o604):  # readable by other users: refused, as ssh refuses such a key
        token_file.chmod(mode)
        with pytest.raises(ConfigError, match="chmod 600"):
            read_token_file(token_file)

    monkeypatch.delenv("DEEPSYNTH_ACCESS_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path / "s")])
    with pytest.raises(ConfigError, match="DEEPSYNTH_ACCESS_TOKEN"):
        run_serve(args)
    args = parser.parse_args(["--token-file", str(token_file), "--state-dir", str(tmp_path / "s")])
    with pytest.raises(ConfigError, match="--token-file"):
        run_serve(args)
    assert not (tmp_path / "s").exists()  # refused before anything is created
    defaults = parser.parse_args([])
    assert (defaults.host, defaults.port, defaults.max_concurrent_jobs, defaults.model) == ("127.0.0.1", 8000, 1, [])
    assert parser.parse_args(["--model", "a/b", "--model", "./m"]).model == ["a/b", "./m"]
    assert "--token" not in {a for action in parser._actions for a in action.option_strings}  # ps shows argv


# --------------------------------------------------------------------------------------- model_name


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A model folder outside the state folder (with a config.json, as a real one has)."""
    folder = tmp_path / "elsewhere" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _refused_names(state_dir: Path, outside: Path) -> list[str]:
    link = state_dir / "models" / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)  # inside by name, outside in fact
    return ["/etc", str(outside), str(outside.parent), "/no/such/folder", "../../etc", "~", ".", str(link),
            f"{state_dir}/../elsewhere/model", "org/name/extra", "org/../etc", "just-a-name", "a" * 300, ""]


def test_model_name_outside_hub_ids_the_allow_list_and_the_state_folder_is_400(state_dir, outside):
    client = TestClient(create_app(state_dir, access_token=ACCESS_TOKEN), headers=AUTH)
    for name in _refused_names(state_dir, outside):
        message = assert_error(client.post("/api/jobs", json={"dataset_id": "sample", "model_name": name}), 400,
                               "model_name", "Hub id", "--model", "state directory")
        assert str(outside) not in message or name == str(outside)
        assert_error(client.post("/api/lora/estimate", json={"model": name}), 400, "model", "Hub id")
        assert_error(client.post("/api/lora/presets/recommended", json={"num_samples": 3, "model": name}), 400,
                     "model", "Hub id")
    assert client.get("/api/jobs").json() == {"jobs": []} and not list((state_dir / "jobs").iterdir())
    # Whether a folder exists does not change the answer.
    exists = client.post("/api/jobs", json={"dataset_id": "sample", "model_name": str(outside)}).json()["error"]
    missing = client.post("/api/jobs", json={"dataset_id": "sample", "model_name": str(outside) + "-no"}).json()
    assert exists.replace(str(outside), "X") == missing["error"].replace(str(outside) + "-no", "X")


def test_a_hub_id_that_is_also_a_local_folder_is_judged_as_that_folder(state_dir, outside, monkeypatch):
    monkeypatch.chdir(outside.parent.parent)  # where "elsewhere/model" is a relative path to a folder
    client = TestClient(create_app(state_dir, access_token=ACCESS_TOKEN), headers=AUTH)
    assert_error(client.post("/api/jobs", json={"dataset_id": "sample", "model_name": "elsewhere/model"}), 400,
                 "model_name")
    assert client.post("/api/jobs", json={"dataset_id": "sample", "model_name": "other/model"}).status_code == 201


def test_accepted_models_hub_ids_the_embedded_default_started_ones_and_state_folders(state_dir, outside, monkeypatch):
    from deepsynth.models import tiny
    from deepsynth.training.lora_config import AdapterSettings
    from deepsynth.training.targets import count_trainable_params

    monkeypatch.chdir(outside.parent)
    inside = state_dir / "models" / "tiny"
    tiny.embedded_config().save_pretrained(inside)
    client = TestClient(create_app(state_dir, access_token=ACCESS_TOKEN, allowed_models=["./model", "org/pinned"]),
                        headers=AUTH)
    accepted = {None: None, "deepsynth/tiny-ocr2": "deepsynth/tiny-ocr2", "deepseek-ai/DeepSeek-OCR":
                "deepseek-ai/DeepSeek-OCR", "./model": str(outside.resolve()), str(outside): str(outside.resolve()),
                str(inside): str(inside.resolve()), f"{state_dir}/models/../models/tiny": str(inside.resolve()),
                "org/pinned": "org/pinned"}
    for name, saved in accepted.items():
        response = client.post("/api/jobs", json={"dataset_id": "sample", "model_name": name})
        assert response.status_code == 201, (name, response.text)
        assert client.get(f"/api/jobs/{response.json()['id']}").json()["config"]["model_name"] == saved, name
    # The refusal lists what this server accepts.
    message = assert_error(client.post("/api/jobs", json={"dataset_id": "sample", "model_name": "/etc"}), 400)
    assert "'./model'" in message and "'org/pinned'" in message
    # A model folder in the state folder is used as the model: here the embedded model's config.
    estimate = client.post("/api/lora/estimate", json={"model": str(inside), "rank": 4})
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["trainable"] == count_trainable_params(None, AdapterSettings(rank=4)).trainable
