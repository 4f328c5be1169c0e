"""A private Postfix for the benchmark: its own configuration and queue directory
(``postfix -c DIR``), listening on 127.0.0.1 only, relaying everything to the benchmark's
sink. Nothing of the machine's own Postfix (if any) is used or touched.

Debian's ``postfix`` package provides the programs; ``bench/setup.sh`` installs it with
apt-get when it is missing (as root; the instance runs its daemons as the ``postfix`` user,
the package's own).

The configuration is Postfix's defaults, except what makes it a loopback relay to the sink:
no local delivery, no DNS, no TLS (the sink has none; mailgate's rows use none either), the
smtp client at 8 connections to the sink (mailgate's ``max_connections`` in the benchmark),
no chroot (the queue directory is a temporary one). Logging goes to a file (``maillog_file``,
Postfix's postlogd), as a real installation logs every message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
MASTER_CF = Path("/usr/share/postfix/master.cf.dist")


def available() -> bool:
    return Path(POSTFIX).exists() and MASTER_CF.exists()


def version() -> str:
    out = subprocess.run(
        [shutil.which("postconf") or "/usr/sbin/postconf", "-d", "-h", "mail_version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


def main_cf(directory: Path, sink_port: int, connections: int) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
maillog_file = {directory}/maillog
maillog_file_prefixes = {directory}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
local_transport = error:local delivery is disabled
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
default_destination_concurrency_limit = {connections}
smtp_destination_concurrency_limit = {connections}
message_size_limit = 52428800
biff = no
append_dot_mydomain = no
"""


def master_cf(port: int) -> str:
    lines = []
    for line in MASTER_CF.read_text().splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"  # no chroot: the queue directory is private and temporary
            line = "  ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivatePostfix:
    """``start()`` it, send mail to ``127.0.0.1:port``, ``stop()`` it (the directory goes)."""

    def __init__(self, directory: Path, sink_port: int, connections: int = 8) -> None:
        self.dir = directory
        self.port = _free_port()
        directory.chmod(0o755)  # the daemons run as postfix and must reach data/ and queue/
        (directory / "queue").mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "main.cf").write_text(main_cf(directory, sink_port, connections))
        (directory / "master.cf").write_text(master_cf(self.port))
        shutil.chown(directory / "data", "postfix", "postfix")

    def _postfix(self, *args: str) -> None:
        done = subprocess.run(
            [POSTFIX, "-c", str(self.dir), *args], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._postfix("start")  # creates the queue's directories with their owners
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not start; see {self.dir}/maillog")
            time.sleep(0.2)

    def master_pid(self) -> int:
        return int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])

    def pids(self) -> list[int]:
        """The master and every process under it (smtpd, cleanup, qmgr, smtp, ...)."""
        master = self.master_pid()
        found, todo = [master], [master]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    kids = [int(p) for p in (task / "children").read_text().split()]
                except OSError:
                    continue
                found += kids
                todo += kids
        return found

    def cpu_s(self) -> float:
        """CPU seconds of every Postfix process so far: the master with its reaped children
        (cutime, cstime: daemons that exited), plus the live daemons."""
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])
            ticks += int(fields[13]) + int(fields[14])  # reaped children
            total += ticks / os.sysconf("SC_CLK_TCK")
        return total

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
            if match:
                total += int(match.group(1))
        return total / 1024

    def queued(self) -> int:
        """Messages in Postfix's queues (files under incoming, active, deferred, maildrop)."""
        count = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.dir / "queue" / sub):
                count += len(files)
        return count

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._postfix("stop")
        deadline = time.monotonic() + 20
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                os.kill(self.master_pid(), 0)
            except (OSError, ValueError):
                break
            time.sleep(0.1)
