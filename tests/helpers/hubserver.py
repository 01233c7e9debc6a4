"""A fake Hugging Face Hub for tests: a test double, not a MedPEFT feature.

Just enough of the Hub's HTTP API for the real ``huggingface_hub`` client (2.x) to create a repo,
commit files to it (every file "regular": inline base64 in the commit, so no LFS/Xet transfer),
read repo info and tree listings and download files (``snapshot_download``, ``hf_hub_download``,
``ModelCard.load``, ``peft.PeftModel.from_pretrained``). Files live in memory; stdlib only.

    hub = FakeHub(token="hf_test").start()   # http://127.0.0.1:<free port>
    ... HfApi(endpoint=hub.url, token="hf_test") ...
    hub.stop()

Endpoints:

====================================================  =============================================
``POST /api/repos/create``                            create (409 if it exists); an initial commit
                                                      with ``.gitattributes``, as the Hub makes
``GET  /api/whoami-v2``                               the token's user and orgs
``POST /api/validate-yaml``                           README front matter must be a YAML mapping
``POST /api/models/{repo}/preupload/{rev}``           ``uploadMode: regular`` for every file
``POST /api/models/{repo}/commit/{rev}``              NDJSON: header, file (base64), deletedFile,
                                                      deletedFolder; ``lfsFile`` is refused (400)
``GET  /api/models`` (``HfApi.list_models``)          search: ``filter`` (tags, all must match), ``search``,
                                                      ``author``, ``limit``; ``cardData``/``full``: the
                                                      README front matter as ``cardData``
``PUT  /api/models/{repo}/settings``                  ``gated``: "auto" / "manual" gate the repo, false opens it
``GET  /api/models/{repo}[/revision/{rev}]``          sha, private, siblings
``GET  /api/models/{repo}/tree/{rev}[/{path}]``       files (+ folders unless ``recursive``)
``HEAD|GET /{repo}/resolve/{rev}/{path}``             X-Repo-Commit, quoted ETag (git blob sha1),
                                                      Content-Length; ``Range: bytes=a-[b]``; a gated
                                                      repo (``gate()``) answers 401 GatedRepo without the token
====================================================  =============================================

Auth: writes and whoami need ``Authorization: Bearer <token>`` (401 otherwise; the Hub's
"Invalid credentials in Authorization header" for a wrong token), and may only touch the
token's own namespace or its orgs (403). Private repos read as "not found" (401) without the
token, like the Hub. Errors carry the Hub's ``X-Error-Code`` header (RepoNotFound,
RevisionNotFound, EntryNotFound) so the client raises its usual exception types.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[\w.\-]+/[\w.\-]+)"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class FakeHub:
    def __init__(self, token: str = "hf_fake_token", user: str = "tester", orgs: tuple[str, ...] = ("org",)):
        self.token, self.user, self.orgs = token, user, tuple(orgs)
        self.repos: dict[str, dict] = {}  # repo_id -> {"private", "commits": {sha: files}, "main": sha}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.gated: set[str] = set()  # repos whose files need the token (see gate())

    # ------------------------------------------------------------------ lifecycle and inspection
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self._snapshot(repo_id, revision, self.token)[1])

    def gate(self, repo_id: str) -> None:
        """Make ``repo_id`` gated, as the Hub does for licensed models: its info is public, but its files
        answer 401 ``GatedRepo`` without the token (the client raises ``GatedRepoError``)."""
        self.gated.add(repo_id)

    # ------------------------------------------------------------------ repo state
    def _repo(self, repo_id: str, auth: str | None) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and auth != self.token):
            raise HubHTTPError(401 if repo is not None or auth != self.token else 404,
                               "Repository not found", "RepoNotFound")
        return repo

    def _snapshot(self, repo_id: str, revision: str, auth: str | None) -> tuple[str, dict[str, bytes]]:
        repo = self._repo(repo_id, auth)
        sha = repo["main"] if revision == "main" else revision
        if sha not in repo["commits"]:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, repo["commits"][sha]

    def _commit(self, repo: dict, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(json.dumps([repo["main"], message, len(repo["commits"]),
                                       sorted((p, git_sha1(d)) for p, d in files.items())]).encode()).hexdigest()
        repo["commits"][sha] = files
        repo["main"] = sha
        return sha

    def _check_write(self, auth: str | None, namespace: str) -> None:
        if auth is None:
            raise HubHTTPError(401, "You must be authenticated to access this resource")
        if auth != self.token:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        if namespace not in (self.user, *self.orgs):
            raise HubHTTPError(403, f"You don't have the rights to create or write to {namespace}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:  # quiet: the requests are in FakeHub.log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ------------------------------------------------------------------ plumbing
    def _auth(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[len("Bearer "):] if value.startswith("Bearer ") else None

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.fake.log.append((self.command, self.path, status))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self.commit),
            ("GET", r"/api/models", self.list_models),
            ("PUT", rf"/api/models/{_REPO}/settings", self.settings),
            ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", self.repo_info),
            ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self.tree),
            ("GET|HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
        ]
        try:
            for methods, pattern, handler in routes:
                m = re.fullmatch(pattern, url.path)
                if m and method in methods.split("|"):
                    args = {k: unquote(v) if v is not None else None for k, v in m.groupdict().items()}
                    with self.fake.lock:
                        return handler(query=query, **args)
            raise HubHTTPError(404, f"fake hub: no route for {method} {url.path}")
        except HubHTTPError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, {"error": str(e)}, headers)

    # ------------------------------------------------------------------ endpoints
    def create_repo(self, query) -> None:
        payload = json.loads(self._body())
        if payload.get("type", "model") != "model":
            raise HubHTTPError(400, "fake hub: model repos only")
        namespace = payload.get("organization") or self.fake.user
        self.fake._check_write(self._auth(), namespace)
        repo_id = f"{namespace}/{payload['name']}"
        if repo_id in self.fake.repos:  # the Hub's 409 carries the url too (create_repo(exist_ok=True) reads it)
            return self._send(409, {"error": "You already created this model repo",
                                    "url": f"{self.fake.url}/{repo_id}"})
        repo = {"private": payload.get("visibility", "public") != "public", "commits": {}, "main": None}
        self.fake.repos[repo_id] = repo
        self.fake._commit(repo, {".gitattributes": GITATTRIBUTES}, "initial commit")
        self._send(200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def whoami(self, query) -> None:
        if self._auth() != self.fake.token:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": self.fake.user, "orgs": [{"name": o} for o in self.fake.orgs],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def validate_yaml(self, query) -> None:
        content = json.loads(self._body()).get("content", "")
        m = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
        if not isinstance(meta, (dict, type(None))):
            return self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}]})
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, query, repo, rev) -> None:
        self.fake._check_write(self._auth(), repo.split("/")[0])
        _, files = self.fake._snapshot(repo, rev, self._auth())
        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                "oid": git_sha1(files[f["path"]]) if f["path"] in files else None}
               for f in json.loads(self._body())["files"]]
        self._send(200, {"files": out, "commitOid": self.fake.repos[repo]["main"]})

    def commit(self, query, repo, rev) -> None:
        self.fake._check_write(self._auth(), repo.split("/")[0])
        if rev != "main":
            raise HubHTTPError(400, "fake hub: commits to main only")
        head, files = self.fake._snapshot(repo, rev, self._auth())
        files, message = dict(files), ""
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                if value.get("parentCommit") not in (None, head):
                    raise HubHTTPError(412, "parentCommit is not the head of the branch")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubHTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:  # lfsFile: the fake always answers "regular", so a real client never sends one
                raise HubHTTPError(400, f"fake hub: unsupported commit operation {key!r}")
        sha = self.fake._commit(self.fake.repos[repo], files, message)
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.fake.url}/{repo}/commit/{sha}",
                         "hookOutput": ""})

    def settings(self, query, repo) -> None:
        """``HfApi.update_repo_settings(repo, gated="manual"|"auto"|False)``: gating as :meth:`FakeHub.gate`."""
        self.fake._check_write(self._auth(), repo.split("/")[0])
        self.fake._repo(repo, self._auth())
        gated = json.loads(self._body() or b"{}").get("gated")
        if gated in ("auto", "manual"):
            self.fake.gated.add(repo)
        elif gated is False:
            self.fake.gated.discard(repo)
        self._send(200, {})

    def repo_info(self, query, repo, rev=None) -> None:
        sha, files = self.fake._snapshot(repo, rev or "main", self._auth())
        self._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": self.fake.repos[repo]["private"],
                         "siblings": [{"rfilename": p, "size": len(d), "blobId": git_sha1(d)}
                                      for p, d in sorted(files.items())], "tags": []})

    def tree(self, query, repo, rev, path=None) -> None:
        _, files = self.fake._snapshot(repo, rev, self._auth())
        prefix = path.strip("/") + "/" if path else ""
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for p, data in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts)):  # parent folders
                folder = prefix + "/".join(parts[:i])
                if recursive or i == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": git_sha1(folder.encode()),
                                                "size": 0})
            if recursive or len(parts) == 1:
                entries[p] = {"type": "file", "path": p, "size": len(data), "oid": git_sha1(data)}
        if path and not entries:
            raise HubHTTPError(404, f"{path} does not exist", "EntryNotFound")
        self._send(200, list(entries.values()))

    def resolve(self, query, repo, rev, path) -> None:
        if repo in self.fake.gated and self._auth() != self.fake.token:
            raise HubHTTPError(401, f"Access to model {repo} is restricted. You must have access to it and be "
                                    f"authenticated to access it. Please log in.", "GatedRepo")
        sha, files = self.fake._snapshot(repo, rev, self._auth())
        if path not in files:
            raise HubHTTPError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = files[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_sha1(data)}"', "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m and self.command == "GET":
            start, end = int(m.group(1)), int(m.group(2) or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    # ------------------------------------------------------------------ search (HfApi.list_models)
    def list_models(self, query) -> None:
        """Every repo the caller may read whose tags (the README's ``tags``, plus ``library_name``,
        ``base_model:<id>`` and ``dataset:<name>`` as the Hub derives them) include every ``filter`` value."""
        q = parse_qs(urlsplit(self.path).query)
        filters, auth = q.get("filter", []), self._auth()
        search, author = (q.get("search") or [""])[-1], (q.get("author") or [None])[-1]
        with_card = any((q.get(k) or ["false"])[-1].lower() in ("1", "true") for k in ("cardData", "full"))
        out = []
        for repo_id, repo in sorted(self.fake.repos.items()):
            if repo["private"] and auth != self.fake.token:
                continue
            if (search and search.lower() not in repo_id.lower()) or (author and repo_id.split("/")[0] != author):
                continue
            meta = _front_matter(repo["commits"][repo["main"]].get("README.md", b""))
            tags = [t for t in meta.get("tags") or [] if isinstance(t, str)]
            tags += [meta["library_name"]] if isinstance(meta.get("library_name"), str) else []
            tags += [f"base_model:{meta['base_model']}"] if isinstance(meta.get("base_model"), str) else []
            tags += [f"dataset:{d}" for d in meta.get("datasets") or [] if isinstance(d, str)]
            if not all(f in tags for f in filters):
                continue
            item = {"id": repo_id, "modelId": repo_id, "private": repo["private"], "sha": repo["main"], "tags": tags,
                    "downloads": 0, "likes": 0, "library_name": meta.get("library_name")}
            if with_card:
                item["cardData"] = meta
            out.append(item)
        limit = (q.get("limit") or [None])[-1]
        self._send(200, out[:int(limit)] if limit else out)


def _front_matter(readme: bytes) -> dict:
    m = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n", readme.decode("utf-8", "replace"), re.S)
    try:
        meta = yaml.safe_load(m.group(1)) if m else {}
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}
