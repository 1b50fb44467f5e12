"""optuna-dashboard on a study store, with the per-trial artifacts of search.study.artifacts wired in.

Served by optuna-dashboard's WSGI app (`optuna_dashboard.wsgi`) on a threaded wsgiref server, as its own
CLI does, but on our storage object: the same SQLite settings as the study (WAL, long busy timeout,
search.study.storage.open_storage), so a dashboard open on a running study never makes its writes fail.

optuna-dashboard's app is imported when it is served, not when this module is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from search.config import valid_study_name
from search.errors import UserError
from search.study.artifacts import artifact_dir
from search.study.storage import find_study, shown


class StudiesArtifactStore:
    """The artifact folders of every study in one storage, each study keeping its own folder.

    optuna-dashboard takes one store for the whole storage; artifact ids are UUIDs, so a read looks in
    each study's folder. Uploads from the dashboard's UI go to the folder of the study it was opened on.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, storage_url: str, study_name: str):
        self.storage, self.storage_url = storage, storage_url
        self.home_dir = _mkdir(artifact_dir(study_name))
        self.home = FileSystemArtifactStore(self.home_dir)

    def _stores(self):
        yield self.home
        for study in self.storage.get_all_studies():
            if not valid_study_name(study.study_name):  # made by another tool: it has no folder of ours
                continue
            folder = artifact_dir(study.study_name)
            if folder.is_dir() and folder != self.home_dir:
                yield FileSystemArtifactStore(folder)

    def open_reader(self, artifact_id: str):
        for store in self._stores():
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} not found")

    def write(self, artifact_id: str, content_body) -> None:
        self.home.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for store in self._stores():
            try:
                return store.remove(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} not found")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_app(study_name: str, storage: str | None = None):
    """(WSGI app, study id, URL): optuna-dashboard on the storage, artifacts from the study folders."""
    from optuna_dashboard import wsgi

    store, url, study_id = find_study(study_name, storage)
    return wsgi(store, artifact_store=StudiesArtifactStore(store, url, study_name)), study_id, url


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection must not keep Ctrl-C from stopping the server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per HTTP request would bury the URL
        pass


def serve(study_name: str, storage: str | None, host: str, port: int) -> None:
    app, study_id, storage_url = make_app(study_name, storage)
    try:
        server = make_server(host, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    where = f"[{host}]" if ":" in host else host
    print(f"optuna-dashboard for study {study_name!r} ({shown(storage_url)}, artifacts in "
          f"{artifact_dir(study_name)}):", flush=True)
    print(f"  http://{where}:{server.server_port}/dashboard/studies/{study_id}", flush=True)
    print("Ctrl-C to stop.", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
