"""fetch() against a small archive served from 127.0.0.1: Range requests, dropped connections,
checksums, the cache. The server runs in a daemon thread and stops itself after the test."""

import hashlib
import http.server
import io
import random
import tarfile
import threading

import pytest

from grukit.data import fetch, read_imdb
from grukit.data.fetch import KNOWN_ARCHIVES
from grukit.errors import ConfigError, DataError


def small_imdb_archive() -> bytes:
    """About 5 kB: large enough to be cut into pieces, random enough not to compress away."""
    words = random.Random(0).choices(["film", "plot", "actor", "scene", "good", "bad", "very", "not"], k=8000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in [("aclImdb/train/pos/0_9.txt", "great film " + " ".join(words[:4000])),
                           ("aclImdb/train/neg/0_2.txt", "dull film " + " ".join(words[4000:])),
                           ("aclImdb/README", "readme")]:
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """Serves one payload; can ignore Range, and can drop the first `drops` responses midway."""

    def __init__(self, payload: bytes):
        self.payload, self.drops, self.honour_range, self.requests = payload, 0, True, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 5

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append(self.headers.get("Range"))
                if self.path != "/aclImdb_v1.tar.gz":
                    self.send_error(404)
                    return
                body, start = owner.payload, 0
                requested = self.headers.get("Range")
                if requested and owner.honour_range:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if owner.drops:
                    owner.drops -= 1
                    self.wfile.write(rest[: len(rest) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/aclImdb_v1.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.stopper = threading.Timer(60, self.httpd.shutdown)  # bounded even if a test hangs
        self.stopper.daemon = True
        self.stopper.start()

    def close(self):
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    payload = small_imdb_archive()
    assert len(payload) > 4_000
    running = Server(payload)
    yield running
    running.close()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_check_and_cache(server, tmp_path, capsys):
    path = fetch("imdb", cache_dir=tmp_path, url=server.url, sha256=digest(server.payload))
    assert path == tmp_path / "aclImdb_v1.tar.gz" and path.read_bytes() == server.payload
    assert "aclImdb_v1.tar.gz:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aclImdb_v1.tar.gz"]
    texts, labels = read_imdb(path, "train")
    assert labels == [0, 1] and texts[1].startswith("great film")
    requests = len(server.requests)
    assert fetch("imdb", cache_dir=tmp_path, url=server.url, sha256=digest(server.payload), progress=False) == path
    assert len(server.requests) == requests  # served from the cache


def test_resumes_a_dropped_connection_with_range(server, tmp_path):
    server.drops = 2
    path = fetch(url=server.url, cache_dir=tmp_path, sha256=digest(server.payload), progress=False)
    assert path.read_bytes() == server.payload
    assert server.requests[0] is None and all(r and r.startswith("bytes=") for r in server.requests[1:])
    assert len(server.requests) == 3


def test_resumes_a_partial_file_from_an_earlier_run(server, tmp_path):
    (tmp_path / "aclImdb_v1.tar.gz.part").write_bytes(server.payload[:1000])
    path = fetch(url=server.url, cache_dir=tmp_path, sha256=digest(server.payload), progress=False)
    assert path.read_bytes() == server.payload and server.requests == ["bytes=1000-"]


def test_server_without_range_restarts(server, tmp_path):
    server.honour_range = False
    (tmp_path / "aclImdb_v1.tar.gz.part").write_bytes(b"garbage" * 10)
    path = fetch(url=server.url, cache_dir=tmp_path, sha256=digest(server.payload), progress=False)
    assert path.read_bytes() == server.payload


def test_complete_partial_file_gets_416(server, tmp_path):
    (tmp_path / "aclImdb_v1.tar.gz.part").write_bytes(server.payload)
    path = fetch(url=server.url, cache_dir=tmp_path, sha256=digest(server.payload), progress=False)
    assert path.read_bytes() == server.payload and server.requests == [f"bytes={len(server.payload)}-"]


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{64}, expected 0{64}; the file was removed"):
        fetch(url=server.url, cache_dir=tmp_path, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_stale_cached_file_is_replaced(server, tmp_path):
    (tmp_path / "aclImdb_v1.tar.gz").write_bytes(b"old")
    path = fetch(url=server.url, cache_dir=tmp_path, sha256=digest(server.payload), progress=False)
    assert path.read_bytes() == server.payload


def test_gives_up_keeping_the_partial_file(server, tmp_path):
    server.drops = 10
    with pytest.raises(DataError, match=r"failed 2 times .* bytes are kept in .*\.part and the next call resumes"):
        fetch(url=server.url, cache_dir=tmp_path, retries=1, progress=False)
    kept = (tmp_path / "aclImdb_v1.tar.gz.part").stat().st_size
    assert 0 < kept < len(server.payload)
    server.drops = 0
    assert fetch(url=server.url, cache_dir=tmp_path, progress=False).read_bytes() == server.payload


def test_bad_requests(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(url=server.url.replace("aclImdb_v1", "nothing"), cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="unknown dataset name 'mnist'; known names are 'imdb'"):
        fetch("mnist", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="64 hex digits"):
        fetch(url=server.url, cache_dir=tmp_path, sha256="abc")


def test_known_imdb_archive():
    imdb = KNOWN_ARCHIVES["imdb"]
    assert imdb.url.endswith("/aclImdb_v1.tar.gz") and len(imdb.sha256) == 64
