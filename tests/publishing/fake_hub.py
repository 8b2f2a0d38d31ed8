"""A small fake Hugging Face Hub, served over real HTTP on 127.0.0.1, for the publishing tests.

It implements only the routes that the real ``huggingface_hub`` 2.4 client calls when the Xet
transfer is not advertised (the client then uses the classic LFS protocol):

- ``POST /api/repos/create``                               create_repo (409 when it exists)
- ``GET  /api/models/{repo}`` and ``.../revision/{rev}``   repo_info (called by create_repo on 401/403
                                                           and by create_commit on empty commits)
- ``GET  /api/models/{repo}/xet-write-token/{rev}``        404: this hub does not advertise Xet
- ``POST /api/validate-yaml``                              README.md front-matter validation
- ``POST /api/models/{repo}/preupload/{rev}``              regular vs LFS upload mode per file
- ``POST /{repo}.git/info/lfs/objects/batch``              LFS batch API (huggingface_hub and git-lfs)
- ``PUT  /__lfs/upload/{oid}``                             the "presigned" upload URL the batch returns
- ``POST /__lfs/verify/{oid}``                             the LFS verify action
- ``POST /{repo}.git/info/lfs/locks/verify``               git-lfs lock check (no locks)
- ``POST /api/models/{repo}/commit/{rev}``                 ndjson commit (regular + LFS files)
- git smart HTTP (``/{repo}[.git]/info/refs``, ``git-upload-pack``, ``git-receive-pack``) through
  the real ``git http-backend`` CGI, when started with ``git_root``.

It records every request (method, path, Authorization header), the files each commit carried and
the LFS objects received, and it can inject failures (see :meth:`FakeHub.fail`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

# Files the fake hub stores through LFS, like the Hub's default .gitattributes plus its 10 MB rule.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".jpeg", ".gz", ".zip")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

_REPO = r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*?)"


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class Commit:
    repo_id: str
    oid: str
    summary: str
    files: dict[str, bytes]  # path -> content, LFS files resolved to their content
    lfs_paths: list[str]


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    head: str = "0" * 40


@dataclass
class _Failure:
    route: str
    status: int
    times: int | None  # None: forever
    match: str | None  # optional LFS oid / path restricting the failure


class FakeHub:
    """State and configuration of the fake hub; use as a context manager to serve it."""

    def __init__(self, *, token: str | None = None, git_root: Path | None = None) -> None:
        # When ``token`` is set every authenticated route demands it (Bearer, or Basic password).
        self.token = token
        self.git_root = git_root
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[Commit] = []
        self.requests: list[Request] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- test helpers

    def fail(self, route: str, status: int, *, times: int | None = 1, match: str | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests of ``route`` (``None``: always).

        Routes: ``create``, ``preupload``, ``commit``, ``lfs_batch``, ``lfs_upload``, ``validate``,
        ``git``. ``match`` restricts ``lfs_upload`` to one LFS oid (sha256 of a file's content).
        """
        with self._lock:
            self._failures.append(_Failure(route, status, times, match))

    def requests_to(self, route_fragment: str) -> list[Request]:
        return [r for r in self.requests if route_fragment in r.path]

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Current content of ``repo_id`` as committed through the HTTP commit API."""
        return dict(self.repos[repo_id].files)

    def bare_repo(self, repo_id: str) -> Path:
        assert self.git_root is not None
        return self.git_root / f"{repo_id}.git"

    # ----------------------------------------------------------------- internals

    def _take_failure(self, route: str, match: str | None = None) -> int | None:
        with self._lock:
            for failure in self._failures:
                if failure.route != route or (failure.match is not None and failure.match != match):
                    continue
                if failure.times is not None:
                    if failure.times <= 0:
                        continue
                    failure.times -= 1
                return failure.status
        return None

    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if header is None:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value == self.token
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False
            return password == self.token
        return False

    def _create_repo(self, repo_id: str, private: bool) -> bool:
        with self._lock:
            if repo_id in self.repos:
                return False
            self.repos[repo_id] = Repo(repo_id=repo_id, private=private)
        if self.git_root is not None:
            bare = self.bare_repo(repo_id)
            bare.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
            subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
        return True


def _upload_mode(path: str, size: int) -> str:
    if size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD):
        return "lfs"
    return "regular"


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's pooled connections expect

    # Silence the default stderr access log.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    # ---------------------------------------------------------------- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(payload).encode(), all_headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if status == 401:
            # git and git-lfs only ask their credential helper after a Basic challenge.
            headers["WWW-Authenticate"] = 'Basic realm="fake-hub"'
        self._json(status, {"error": message}, headers)

    def _require_auth(self) -> bool:
        if self.hub._authorized(self.headers.get("Authorization")):
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _injected(self, route: str, match: str | None = None) -> bool:
        status = self.hub._take_failure(route, match)
        if status is None:
            return False
        self._error(status, f"injected failure on {route} ({status})")
        return True

    # ---------------------------------------------------------------- dispatch

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        self.hub.requests.append(Request(self.command, path, self.headers.get("Authorization")))
        body = self._body()
        method = self.command

        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", rf"/api/models/{_REPO}/xet-write-token/(?P<rev>.+)", self._no_xet),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>.+)", self._preupload),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>.+)", self._commit),
            ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>.+)", self._repo_info),
            ("GET", rf"/api/models/{_REPO}", self._repo_info),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", rf"/{_REPO}\.git/info/lfs/locks/verify", self._lfs_locks),
            ("PUT", r"/__lfs/upload/(?P<oid>[0-9a-f]{64})", self._lfs_upload),
            ("POST", r"/__lfs/verify/(?P<oid>[0-9a-f]{64})", self._lfs_verify),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                handler(body=body, **match.groupdict())
                return
        git = re.fullmatch(rf"/{_REPO}(?:\.git)?/(?P<rest>info/refs|git-upload-pack|git-receive-pack)", path)
        if git and self.hub.git_root is not None:
            self._git(body=body, query=split.query, **git.groupdict())
            return
        self._error(404, f"no route for {method} {path}")

    # ---------------------------------------------------------------- API routes

    def _create_repo(self, body: bytes) -> None:
        if not self._require_auth() or self._injected("create"):
            return
        payload = json.loads(body)
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        private = payload.get("visibility") == "private"
        if not self.hub._create_repo(repo_id, private):
            # The Hub's 409 carries the repo URL too: create_repo(exist_ok=True) returns it.
            message = "You already created this model repo"
            self._json(409, {"error": message, "url": f"{self.hub.url}/{repo_id}"}, {"X-Error-Message": message})
            return
        self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": uuid.uuid4().hex})

    def _validate_yaml(self, body: bytes) -> None:
        if self._injected("validate"):
            return
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            self._json(400, {"errors": [{"message": str(exc)}], "warnings": []})
            return
        if metadata is not None and not isinstance(metadata, dict):
            self._json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _no_xet(self, body: bytes, repo: str, rev: str) -> None:
        self._error(404, "Xet is not enabled on this hub")

    def _repo_or_404(self, repo: str) -> Repo | None:
        found = self.hub.repos.get(repo)
        if found is None:
            self._error(404, "Repository not found", code="RepoNotFound")
        return found

    def _repo_info(self, body: bytes, repo: str, rev: str | None = None) -> None:
        if not self._require_auth():
            return
        found = self._repo_or_404(repo)
        if found is None:
            return
        siblings = [{"rfilename": name} for name in sorted(found.files)]
        self._json(200, {"id": repo, "sha": found.head, "private": found.private, "siblings": siblings})

    def _preupload(self, body: bytes, repo: str, rev: str) -> None:
        if not self._require_auth() or self._injected("preupload"):
            return
        if self._repo_or_404(repo) is None:
            return
        files = json.loads(body)["files"]
        answer = [
            {"path": f["path"], "uploadMode": _upload_mode(f["path"], f["size"]), "shouldIgnore": False, "oid": None}
            for f in files
        ]
        self._json(200, {"files": answer, "commitOid": self.hub.repos[repo].head})

    def _commit(self, body: bytes, repo: str, rev: str) -> None:
        if not self._require_auth() or self._injected("commit"):
            return
        found = self._repo_or_404(repo)
        if found is None:
            return
        summary = ""
        added: dict[str, bytes] = {}
        lfs_paths: list[str] = []
        deleted: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary = value["summary"]
            elif item["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                content = self.hub.lfs_objects.get(value["oid"])
                if content is None:
                    self._error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    return
                added[value["path"]] = content
                lfs_paths.append(value["path"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        with self.hub._lock:
            for path in deleted:
                found.files.pop(path, None)
            found.files.update(added)
            found.head = oid
            self.hub.commits.append(Commit(repo, oid, summary, added, lfs_paths))
        self._json(200, {"commitUrl": f"{self.hub.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    # ---------------------------------------------------------------- LFS routes

    def _lfs_batch(self, body: bytes, repo: str) -> None:
        if not self._require_auth() or self._injected("lfs_batch"):
            return
        if self._repo_or_404(repo) is None:
            return
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/__lfs/upload/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/__lfs/verify/{obj['oid']}", "header": {}},
                }
            objects.append(entry)
        answer = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, answer, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_locks(self, body: bytes, repo: str) -> None:
        answer = json.dumps({"ours": [], "theirs": []}).encode()
        self._send(200, answer, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, body: bytes, oid: str) -> None:
        # Like a presigned S3 URL: no Authorization needed (and none is sent).
        if self._injected("lfs_upload", match=oid):
            return
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(400, "content does not match its oid")
            return
        with self.hub._lock:
            self.hub.lfs_objects[oid] = body
        self._send(200)

    def _lfs_verify(self, body: bytes, oid: str) -> None:
        if oid not in self.hub.lfs_objects:
            self._error(404, "object not uploaded")
            return
        self._json(200, {"oid": oid})

    # ---------------------------------------------------------------- git smart HTTP

    def _git(self, body: bytes, query: str, repo: str, rest: str) -> None:
        if not self._require_auth() or self._injected("git"):
            return
        if repo not in self.hub.repos:
            self._error(404, "Repository not found")
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.hub.git_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{repo}.git/{rest}",
            "REQUEST_METHOD": self.command,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "fake-user",
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        self._send(status, payload, headers)
