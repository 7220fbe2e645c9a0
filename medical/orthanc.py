"""Start and stop a private Orthanc PACS on a free loopback port, for tests and demos.

`LocalOrthanc(workdir)` writes a config into `workdir` (storage, index and log live there too),
runs `Orthanc <config>` as a child process with the DICOMweb plugin, and waits until
`GET /system` answers. Orthanc 1.10 binds its HTTP port on 0.0.0.0 whatever the config says,
so `RemoteAccessAllowed: false` is what keeps other hosts out (they get 403); the DICOM
(DIMSE) server is disabled, as everything here goes over DICOMweb.

    with LocalOrthanc(tmp_path) as pacs:
        client = PacsClient(pacs.dicomweb_url)
"""

from __future__ import annotations

import atexit
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from domainvlm.medical.errors import PacsError

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "install it with `apt-get install orthanc orthanc-dicomweb`"
_LOG_TAIL_LINES = 15


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_orthanc() -> str:
    """Path of the Orthanc executable; PacsError saying how to install it when missing."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise PacsError(f"Orthanc is not installed (no `Orthanc` on PATH or in /usr/sbin); "
                        f"{INSTALL_HINT}")
    return found


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin library: the Debian path, else whatever `dpkg -L` lists."""
    if DICOMWEB_PLUGIN.is_file():
        return DICOMWEB_PLUGIN
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True,
                                text=True, timeout=10, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        listed = []
    for name in listed:
        if Path(name).name.startswith("libOrthancDicomWeb.so") and Path(name).is_file():
            return Path(name)
    raise PacsError(f"the Orthanc DICOMweb plugin is not installed (no {DICOMWEB_PLUGIN}); "
                    f"{INSTALL_HINT}")


class LocalOrthanc:
    """One Orthanc process serving `workdir`; a context manager that always stops it.

    `url` is the REST root (http://127.0.0.1:<port>), `dicomweb_url` the DICOMweb root.
    A port of None means a free one is picked (and re-picked if another process takes it
    between the check and Orthanc's bind).
    """

    def __init__(self, workdir: Path, http_port: int | None = None, *,
                 start_timeout: float = 30.0, stop_timeout: float = 15.0,
                 executable: str | None = None) -> None:
        # Absolute now: Orthanc runs in workdir and reads the paths in its config from there.
        self.workdir = Path(workdir).absolute()
        self.http_port = http_port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.executable = executable
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        if self.http_port is None:
            raise PacsError("Orthanc has not been started: call start() or use `with`")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def config(self, name: str, http_port: int, dicom_port: int,
               plugin: Path) -> dict[str, Any]:
        """The Orthanc configuration: loopback-only, no authentication, DICOMweb on.

        `name` is unique per start: /system reports it, which tells our Orthanc apart from
        another server already answering on the port.
        """
        storage = self.workdir / "storage"
        return {
            "Name": name,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomPort": dicom_port,  # unused while the DICOM server is off; free anyway
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "SaveJobs": False,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def start(self) -> LocalOrthanc:
        """Start Orthanc and wait until its REST API answers; PacsError with the log tail if not."""
        if self.is_running:
            return self
        executable = self.executable or find_orthanc()
        plugin = find_dicomweb_plugin()
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.http_port is not None else 3
        for attempt in range(attempts):
            port = self.http_port if self.http_port is not None else free_port()
            name = f"domainvlm-{secrets.token_hex(6)}"
            self._write_config(self.config(name, port, free_port(), plugin))
            self._launch(executable, port)
            try:
                self._wait_until_up(port, name)
            except PacsError:
                self.stop()
                if attempt + 1 < attempts and self._lost_port_race():
                    continue
                raise
            self.http_port = port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout` s; the process is reaped either way."""
        process, self.process = self.process, None
        if process is not None:
            atexit.unregister(self._stop_at_exit)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def _write_config(self, config: dict[str, Any]) -> None:
        from domainvlm.atomic import write_json

        write_json(self.config_path, config)

    def _launch(self, executable: str, port: int) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self._log.write(f"--- starting Orthanc on port {port}\n".encode())
        self._log.flush()
        try:
            self.process = subprocess.Popen(
                [executable, str(self.config_path)], cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as err:
            self.stop()
            raise PacsError(f"cannot run Orthanc ({executable}: {err.strerror or err}); "
                            f"{INSTALL_HINT}") from None
        # A test run that dies without stopping us must not leave an orphan Orthanc behind.
        atexit.register(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        self.stop()

    def _wait_until_up(self, port: int, name: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        system = f"http://127.0.0.1:{port}/system"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PacsError(f"Orthanc exited with code {self.process.returncode} while "
                                f"starting ({self.config_path}); its log ends:\n"
                                f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(system, timeout=2) as response:
                    if json.load(response).get("Name") == name:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise PacsError(f"Orthanc did not answer on {system} within "
                                f"{self.start_timeout:g} s; its log ends:\n{self.log_tail()}")
            time.sleep(0.05)

    def _lost_port_race(self) -> bool:
        return "already in use" in self.log_tail(40)
