"""Tests for download_data.sh against a real HTTP server on 127.0.0.1.

The server (http.server in a thread, with byte-range support that SimpleHTTPRequestHandler lacks)
serves small FMA-layout zips built here and records every request, so resumes can be checked.

Run: python -m pytest tests/test_download.py -q
"""
import hashlib
import http.server
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "download_data.sh"
BASH = shutil.which("bash")
TRACKS = {"000/000002.mp3": os.urandom(120_000), "000/000005.mp3": os.urandom(80_000),
          "140/140316.mp3": os.urandom(50_000)}
TRACKS_CSV = b",album,set\n,id,split\ntrack_id,,\n2,1,training\n5,1,validation\n140316,2,test\n"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-` support; optionally cuts one response off halfway, or ignores
    Range altogether (a 200 with the whole file, like a server without range support)."""

    def do_GET(self):
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.server.requests.append((name, rng))
        if self.server.ignore_range:
            rng = None
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.cut_once:  # a dropped connection: promised bytes never arrive
            self.server.cut_once.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


class FMAServer:
    def __init__(self, files):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        self.httpd.files, self.httpd.requests, self.httpd.cut_once = dict(files), [], set()
        self.httpd.ignore_range = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fma"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self):
        return self.httpd.requests

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_zip(path, folder, members, compression=zipfile.ZIP_BZIP2):
    with zipfile.ZipFile(path, "w", compression) as zf:  # FMA's own zips use bzip2
        for name, data in members.items():
            zf.writestr(f"{folder}/{name}", data)
    return path.read_bytes()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zips")
    return {
        "fma_metadata.zip": make_zip(tmp / "m.zip", "fma_metadata",
                                     {"tracks.csv": TRACKS_CSV, "genres.csv": b"genre_id,title\n"}),
        "fma_small.zip": make_zip(tmp / "s.zip", "fma_small", TRACKS),
    }


@pytest.fixture
def server(archives):
    srv = FMAServer({f"fma/{name}": data for name, data in archives.items()})
    yield srv
    srv.stop()


@pytest.fixture
def checksums(tmp_path, archives):
    path = tmp_path / "SHA1SUMS"
    path.write_text("".join(f"{hashlib.sha1(d).hexdigest()}  {n}\n" for n, d in archives.items()))
    return path


def run_script(data_dir, base_url, checksums, *args, path=None, **environment):
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(FMA_BASE_URL=base_url, FMA_CHECKSUMS=str(checksums), **environment)
    if path is not None:
        env["PATH"] = path
    args = args or ("small", str(data_dir))
    return subprocess.run([BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def path_without(tmp_path, *tools):
    """A PATH holding everything the current one does except `tools` (symlinked into one folder)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bindir / entry.name
            if entry.name not in tools and not os.path.lexists(link):
                link.symlink_to(entry.path)
    if not (bindir / "python3").exists():  # the unzip fallback needs a python3
        (bindir / "python3").symlink_to(sys.executable)
    return str(bindir)


# What download_data.sh runs besides bash builtins and its downloader (shasum is macOS's sha1sum).
SCRIPT_TOOLS = ("mkdir", "rm", "mv", "cut", "tr", "sha1sum", "shasum", "unzip")


def path_with_only(tmp_path, *tools):
    """A PATH holding just those of `tools` installed here (symlinked into one folder)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in tools:
        if shutil.which(tool):
            (bindir / tool).symlink_to(shutil.which(tool))
    return str(bindir)


def assert_official_layout(data_dir):
    assert (data_dir / "fma_metadata" / "tracks.csv").read_bytes() == TRACKS_CSV
    for name, data in TRACKS.items():
        assert (data_dir / "fma_small" / name).read_bytes() == data
    for folder in ("fma_metadata", "fma_small"):
        assert (data_dir / folder / ".complete").is_file()
    assert not list(data_dir.glob("*.part")) and not list(data_dir.glob("*.extracting"))


def test_success_extracts_official_layout(tmp_path, server, checksums, archives):
    data = tmp_path / "my data\\x"  # a space and a backslash check the quoting and sha1sum
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)
    assert (data / "fma_small.zip").read_bytes() == archives["fma_small.zip"]
    assert sorted(server.requests) == [("fma/fma_metadata.zip", None), ("fma/fma_small.zip", None)]
    marker = (data / "fma_small" / ".complete").read_text()
    assert hashlib.sha1(archives["fma_small.zip"]).hexdigest() in marker


def test_second_run_does_nothing_even_offline(tmp_path, server, checksums):
    data = tmp_path / "data"
    assert run_script(data, server.url, checksums).returncode == 0
    server.stop()
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert "already in place" in result.stdout and "nothing to do" in result.stdout
    assert_official_layout(data)


@pytest.fixture(params=["curl", "wget"])
def only_downloader(request, tmp_path):
    """A PATH on which the script finds only one of curl and wget."""
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed, so download_data.sh's {request.param} "
                    "branch is not tested here")
    return path_without(tmp_path, {"curl": "wget", "wget": "curl"}[request.param])


def half_downloaded(tmp_path, archives):
    """A data folder holding the first half of fma_small.zip as an interrupted download; (folder, bytes)."""
    data = tmp_path / "data"
    data.mkdir()
    half = len(archives["fma_small.zip"]) // 2
    (data / "fma_small.zip.part").write_bytes(archives["fma_small.zip"][:half])
    return data, half


def test_resume_from_partial_download(tmp_path, server, checksums, archives, only_downloader):
    data, half = half_downloaded(tmp_path, archives)
    result = run_script(data, server.url, checksums, path=only_downloader)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert ("fma/fma_small.zip", f"bytes={half}-") in server.requests
    assert ("fma/fma_small.zip", None) not in server.requests
    assert_official_layout(data)


def test_dropped_connection_then_rerun_resumes(tmp_path, server, checksums):
    data = tmp_path / "data"
    server.httpd.cut_once.add("fma/fma_small.zip")
    failed = run_script(data, server.url, checksums)
    assert failed.returncode != 0
    assert f"{server.url}/fma_small.zip" in failed.stderr
    assert "could not be reached" in failed.stderr and "--demo=True" in failed.stderr
    partial = (data / "fma_small.zip.part").stat().st_size
    assert partial > 0
    assert not (data / "fma_small").exists()
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert ("fma/fma_small.zip", f"bytes={partial}-") in server.requests
    assert_official_layout(data)


def test_part_file_already_complete(tmp_path, server, checksums, archives, only_downloader):
    """Interrupted between the last byte and the rename: the server answers 416 to the resume."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "fma_small.zip.part").write_bytes(archives["fma_small.zip"])
    result = run_script(data, server.url, checksums, path=only_downloader)
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)


def test_server_ignoring_range_gives_correct_archive(tmp_path, server, checksums, archives,
                                                     only_downloader):
    """A server without range support answers a resume with the whole file (200, not 206): the
    partial download must be replaced by it, not extended with it."""
    server.httpd.ignore_range = True
    data, half = half_downloaded(tmp_path, archives)
    result = run_script(data, server.url, checksums, path=only_downloader)
    assert result.returncode == 0, result.stderr
    assert ("fma/fma_small.zip", f"bytes={half}-") in server.requests
    assert "after resuming" not in result.stderr  # handled by the downloader, not the checksum net
    assert (data / "fma_small.zip").read_bytes() == archives["fma_small.zip"]
    assert_official_layout(data)


def test_resume_failing_checksum_restarts_from_zero(tmp_path, server, checksums, only_downloader):
    """A .part that is no prefix of the served file (a server or proxy that mishandled a resume,
    or the leftover of another file) ends in a checksum mismatch: download once more from zero."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "fma_small.zip.part").write_bytes(os.urandom(1000))
    result = run_script(data, server.url, checksums, path=only_downloader)
    assert result.returncode == 0, result.stderr
    assert "fma_small.zip does not match its SHA1 after resuming" in result.stderr
    assert server.requests.count(("fma/fma_small.zip", "bytes=1000-")) == 1
    assert server.requests.count(("fma/fma_small.zip", None)) == 1
    assert not list(data.glob("*.bad"))
    assert_official_layout(data)


def test_manually_downloaded_archives_used_offline(tmp_path, server, checksums, archives):
    data = tmp_path / "data"
    data.mkdir()
    for name, content in archives.items():
        (data / name).write_bytes(content)
    server.stop()
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert "not downloading it again" in result.stdout
    assert_official_layout(data)


def test_checksum_mismatch_keeps_bad_file(tmp_path, server, checksums, archives):
    data = tmp_path / "data"
    good = checksums.read_text()
    checksums.write_text(good.replace(hashlib.sha1(archives["fma_small.zip"]).hexdigest(), "0" * 40))
    result = run_script(data, server.url, checksums)
    assert result.returncode != 0
    assert "checksum mismatch for fma_small.zip" in result.stderr
    assert "FMA_CHECKSUMS" in result.stderr and "Rerun" in result.stderr
    assert (data / "fma_small.zip.bad").read_bytes() == archives["fma_small.zip"]
    assert not (data / "fma_small.zip").exists()
    assert not (data / "fma_small").exists() and not (data / "fma_small.extracting").exists()
    assert (data / "fma_metadata" / ".complete").is_file()  # the good archive still unpacked

    checksums.write_text(good)  # the message's advice: rerun downloads afresh
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)


def test_checksums_file_without_entry(tmp_path, server, checksums):
    checksums.write_text(checksums.read_text().splitlines()[0] + "\n")  # metadata line only
    result = run_script(tmp_path / "data", server.url, checksums)
    assert result.returncode != 0
    assert "has no line for fma_small.zip" in result.stderr
    assert not (tmp_path / "data" / "fma_small").exists()
    assert ("fma/fma_small.zip", None) not in server.requests  # found out before downloading it


CHECKSUM_STYLES = {  # how checksum files written elsewhere (Windows editors, PowerShell) differ
    "crlf": lambda text: text.replace("\n", "\r\n"),
    "no final newline": lambda text: text.rstrip("\n"),
    "uppercase hex": lambda text: re.sub(r"^[0-9a-f]+", lambda m: m[0].upper(), text, flags=re.M),
}


@pytest.mark.parametrize("style", CHECKSUM_STYLES)
def test_checksums_file_written_elsewhere(tmp_path, server, checksums, style):
    checksums.write_bytes(CHECKSUM_STYLES[style](checksums.read_text()).encode())
    data = tmp_path / "data"
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)


def test_server_down_names_url(tmp_path, checksums):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fma"
    result = run_script(tmp_path / "data", url, checksums)
    assert result.returncode != 0
    assert "FMA could not be reached" in result.stderr
    assert f"{url}/fma_metadata.zip" in result.stderr
    assert "--demo=True" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "fma_metadata").exists()


def test_missing_file_on_server(tmp_path, server, checksums):
    del server.httpd.files["fma/fma_small.zip"]
    result = run_script(tmp_path / "data", server.url, checksums)
    assert result.returncode != 0
    assert "404" in result.stderr and f"{server.url}/fma_small.zip" in result.stderr
    assert not (tmp_path / "data" / "fma_small").exists()


def test_corrupt_archive_leaves_no_folder(tmp_path, server, checksums, archives):
    """A zip that passes the checksum but fails to unpack halfway leaves nothing looking complete."""
    raw = bytearray(make_zip(tmp_path / "c.zip", "fma_small", TRACKS, zipfile.ZIP_STORED))
    with zipfile.ZipFile(tmp_path / "c.zip") as zf:
        last = zf.infolist()[-1]
    raw[last.header_offset + 200] ^= 0xFF  # inside the last member's data: its CRC check fails
    server.httpd.files["fma/fma_small.zip"] = bytes(raw)
    checksums.write_text(f"{hashlib.sha1(raw).hexdigest()}  fma_small.zip\n"
                         f"{hashlib.sha1(archives['fma_metadata.zip']).hexdigest()}  fma_metadata.zip\n")
    data = tmp_path / "data"
    result = run_script(data, server.url, checksums)
    assert result.returncode != 0
    assert "unpacking" in result.stderr and "fma_small.zip" in result.stderr
    assert not (data / "fma_small").exists() and not (data / "fma_small.extracting").exists()
    assert (data / "fma_small.zip").is_file()


def test_interrupted_extraction_is_redone(tmp_path, server, checksums):
    data = tmp_path / "data"
    leftover = data / "fma_small.extracting" / "fma_small" / "000"
    leftover.mkdir(parents=True)
    (leftover / "000002.mp3").write_bytes(b"half")
    result = run_script(data, server.url, checksums)
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)


def test_foreign_folder_is_left_alone(tmp_path, server, checksums):
    mine = tmp_path / "data" / "fma_small" / "000" / "000002.mp3"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own file")
    result = run_script(tmp_path / "data", server.url, checksums)
    assert result.returncode != 0
    assert "fma_small exists but has no .complete marker" in result.stderr
    assert mine.read_bytes() == b"my own file"
    assert server.requests == []  # refused before downloading anything


def test_without_unzip_uses_python_zipfile(tmp_path, server, checksums):
    data = tmp_path / "data"
    result = run_script(data, server.url, checksums, path=path_without(tmp_path, "unzip"))
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)


def test_no_downloader_says_how_to_install_one(tmp_path, server, checksums, archives):
    data, path = tmp_path / "data", path_with_only(tmp_path, *SCRIPT_TOOLS)
    result = run_script(data, server.url, checksums, path=path)
    assert result.returncode != 0
    for advice in ("neither curl nor wget", "apt-get install curl", "brew install curl",
                   "conda install", f"{server.url}/fma_metadata.zip"):
        assert advice in result.stderr
    assert "command not found" not in result.stderr and server.requests == []
    for name, content in archives.items():  # the message's other way: archives fetched by hand
        (data / name).write_bytes(content)
    result = run_script(data, server.url, checksums, path=path)  # SCRIPT_TOOLS are all it needs
    assert result.returncode == 0, result.stderr
    assert_official_layout(data)


@pytest.mark.parametrize("args", [("tiny",), ("small", "data", "extra")])
def test_usage_errors(tmp_path, checksums, args):
    result = run_script(tmp_path, "http://127.0.0.1:9/fma", checksums, *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert args != ("tiny",) or "unknown FMA subset 'tiny'" in result.stderr


@pytest.mark.parametrize("name", ["fma_small/../../escaped.mp3", "/tmp/absolute.mp3"])
def test_an_archive_with_unsafe_paths_is_named_as_such(tmp_path, server, checksums, archives, name):
    """An entry with '..' or an absolute name (which unzip refuses or rewrites) is named, nothing is unpacked, and
    the message does not say 'check the free space'."""
    raw = make_zip(tmp_path / "unsafe.zip", "fma_small", TRACKS)
    with zipfile.ZipFile(tmp_path / "unsafe.zip", "a") as zf:
        zf.writestr(name, b"not where it belongs")
    raw = (tmp_path / "unsafe.zip").read_bytes()
    server.httpd.files["fma/fma_small.zip"] = raw
    checksums.write_text(f"{hashlib.sha1(raw).hexdigest()}  fma_small.zip\n"
                         f"{hashlib.sha1(archives['fma_metadata.zip']).hexdigest()}  fma_metadata.zip\n")
    data = tmp_path / "work" / "data"
    result = run_script(data, server.url, checksums)
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert f"fma_small.zip holds entries with unsafe paths (absolute, or climbing out with '..'), e.g. {name}." in message
    assert f"It was not unpacked, so nothing was written outside {data}" in message and "free space" not in message
    assert not (tmp_path / "work" / "escaped.mp3").exists() and not (data / "fma_small").exists()
    assert not list(data.glob("*.extracting"))


def test_fma_complete_fills_in_a_partial_folder_and_keeps_its_files(tmp_path, server, checksums):
    data = tmp_path / "data"
    assert run_script(data, server.url, checksums).returncode == 0
    (data / "fma_small" / "000" / "000005.mp3").unlink()  # a partial copy: one clip lost, one of the user's own
    (data / "fma_small" / ".complete").unlink()
    (data / "fma_small" / "000" / "000002.mp3").write_bytes(b"kept as it is")
    result = run_script(data, server.url, checksums, FMA_COMPLETE="1")
    assert result.returncode == 0, result.stderr
    assert "filling in the files missing from" in result.stdout
    assert (data / "fma_small" / "000" / "000005.mp3").read_bytes() == TRACKS["000/000005.mp3"]
    assert (data / "fma_small" / "000" / "000002.mp3").read_bytes() == b"kept as it is"
    assert (data / "fma_small" / ".complete").is_file()
