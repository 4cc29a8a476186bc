"""Download public dataset archives into a local cache, checked, resumable and atomic.

``fetch("imdb")`` downloads the Stanford aclImdb_v1.tar.gz (84 MB) once and returns its path;
``read_imdb(fetch("imdb"))`` then reads it without extracting it.

How a download goes:

1. If ``<cache>/<file>`` exists and its sha256 matches, it is returned at once.
2. Bytes go to ``<cache>/<file>.part``. If that file is there from an interrupted run, the request
   asks only for the rest (HTTP ``Range: bytes=<size>-``); a server that ignores Range sends the
   whole file again and the partial file is restarted.
3. A connection that drops midway is retried (``retries`` times), each time resuming where it stopped.
4. The finished file is checked against ``sha256`` (and the server's length); on a mismatch the
   partial file is deleted and ``DataError`` is raised. Only a checked file is renamed to its final
   name (an atomic rename), so the cache never holds a half-written or corrupt archive under the
   real name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grukit.errors import ConfigError, DataError

CHUNK = 1 << 16


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str | None
    description: str


# Checksums recorded only where published and confirmed; the IMDB one is the sha256 that the
# dataset loaders of several projects verify aclImdb_v1.tar.gz against.
KNOWN_ARCHIVES = {
    "imdb": Archive(
        url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        description="Large Movie Review Dataset v1.0 (Maas et al. 2011), 50k labelled + 50k unlabelled reviews",
    ),
}


def default_cache_dir() -> Path:
    """``$GRUKIT_CACHE`` if set, else ``~/.cache/grukit``."""
    return Path(os.environ.get("GRUKIT_CACHE") or Path.home() / ".cache" / "grukit")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Progress:
    """One line on stderr, rewritten at most every half second."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.last = name, enabled, 0.0

    def __call__(self, done: int, total: int | None, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        if total:
            text = f"\r{self.name}: {done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done / total:.0f}%)"
        else:
            text = f"\r{self.name}: {done / 1e6:.1f} MB"
        sys.stderr.write(text + ("\n" if final else ""))
        sys.stderr.flush()


def _content_range_start(header: str | None) -> int | None:
    # "bytes 100-199/200"
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[6:].split("-", 1)[0])
    except ValueError:
        return None


def _download_once(url: str, part: Path, timeout: float, progress: Callable) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the full length if the server said it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "grukit", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            # Nothing left to send: the partial file is already whole (the checksum will tell).
            return have
        raise
    with response:
        total = None
        if response.status == 206 and _content_range_start(response.headers.get("Content-Range")) == have:
            mode = "ab"
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
        else:
            mode, have = "wb", 0
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
        with open(part, mode) as handle:
            done = have
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                handle.write(block)
                done += len(block)
                progress(done, total)
            handle.flush()
            os.fsync(handle.fileno())
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)
        return total


def fetch(name: str | None = None, cache_dir: str | os.PathLike | None = None, url: str | None = None,
          sha256: str | None = None, *, filename: str | None = None, retries: int = 3, timeout: float = 60.0,
          progress: bool = True) -> Path:
    """Download a public archive into the cache (once) and return its local path.

    Args:
        name: a known archive (``"imdb"``), or any name when ``url=`` is given. For a known name
            ``url``/``sha256`` override the recorded ones (e.g. a mirror).
        cache_dir: where files are kept; default ``$GRUKIT_CACHE`` or ``~/.cache/grukit``.
        url: what to download (http, https or file).
        sha256: the expected checksum (hex). Without one (an unknown URL) the file is kept as
            downloaded, checked only against the length the server announced.
        filename: the file's name in the cache; default the last part of the URL.
        retries: how many times a dropped connection is resumed before giving up.
        progress: print a progress line on stderr.

    Raises DataError for a checksum mismatch (the bad file is removed) or a download that keeps
    failing (the partial file is kept, so the next call resumes it).

    Example::

        path = fetch("imdb")                        # ~/.cache/grukit/aclImdb_v1.tar.gz
        texts, labels = read_imdb(path, split="train")
    """
    if url is None:
        if name not in KNOWN_ARCHIVES:
            known = ", ".join(repr(k) for k in KNOWN_ARCHIVES)
            raise ConfigError(f"fetch: unknown dataset name {name!r}; known names are {known}, or pass url= "
                              f"(and sha256=) for any other archive")
        archive = KNOWN_ARCHIVES[name]
        url, sha256 = archive.url, sha256 or archive.sha256
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ConfigError(f"fetch: sha256 must be 64 hex digits, got {sha256!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"fetch: retries must be an int >= 0, got {retries!r}")
    filename = filename or Path(urllib.parse.urlparse(url).path).name
    if not filename:
        raise ConfigError(f"fetch: cannot take a file name from url={url!r}; pass filename=")

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / filename
    part = folder / (filename + ".part")
    if final.is_file():
        if sha256 is None or file_sha256(final) == sha256:
            return final
        # A stale or corrupt cached copy: download it again, keeping the old one until the new one is checked.

    show = _Progress(filename, progress)
    total = None
    for attempt in range(retries + 1):
        try:
            total = _download_once(url, part, timeout, show)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code < 500 and error.code != 408:
                raise DataError(f"fetch: {url} answered HTTP {error.code} {error.reason}; check the URL") from error
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DataError(f"fetch: downloading {url} failed {retries + 1} times (last: {error!r}); "
                                f"{kept:,} bytes are kept in {part} and the next call resumes from there") from error
            if progress:
                sys.stderr.write(f"\n{filename}: connection lost ({error.__class__.__name__}), resuming\n")
            time.sleep(min(2.0 ** attempt * 0.1, 2.0))
    size = part.stat().st_size
    show(size, total, final=True)
    if total is not None and size != total:
        part.unlink(missing_ok=True)
        raise DataError(f"fetch: {url} gave {size:,} bytes but announced {total:,}; the partial file was removed, "
                        f"call fetch again")
    if sha256 is not None:
        got = file_sha256(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise DataError(f"fetch: {url} downloaded to {size:,} bytes with sha256 {got}, expected {sha256}; the "
                            f"file was removed. Call fetch again; if it persists the server's file changed, so check "
                            f"the URL or pass the right sha256=")
    os.replace(part, final)
    return final


__all__ = ["fetch", "KNOWN_ARCHIVES", "default_cache_dir", "file_sha256"]
