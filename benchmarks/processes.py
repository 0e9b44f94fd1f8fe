"""The server's processes on this machine and the CPU time each of them uses during a run.

A server on a loopback URL is found by its port: the socket in ``/proc/net/tcp`` and
``/proc/net/tcp6`` listening there gives an inode, and the process holding ``socket:[inode]``
among its ``/proc/<pid>/fd`` links is a listener. Several listeners (frontends sharing the port,
or a parent that bound the socket and its children that inherited it) stand for their lowest
common ancestor; a ``tensorgate serve`` supervisor above a lone listener is taken in too. From
that root the whole process tree is measured: each process's own user + system CPU seconds
(all its threads), with a role read from its command line. Workers (the runtime worker processes,
Triton's Python backend stubs, or whatever ``--worker-match`` names) run the model; every other
process is the gateway, and its CPU divided by the requests served is the gateway CPU per request.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from benchmarks.system import children, cmdline, cpu_seconds

#: Command-line fragments that make a process a model worker, and the role shown for it.
WORKER_ROLES = (("runtimes.worker", "runtime worker"), ("triton_python_backend_stub", "python backend stub"))
#: Other command-line fragments with a role of their own.
OTHER_ROLES = (("multiprocessing.resource_tracker", "resource tracker"), ("frontend", "frontend"))
#: A parent with one of these in its command line is the server's supervisor (``tensorgate serve``).
SUPERVISORS = ("gateway.cli serve", "tensorgate serve")
_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class ServerProcess:
    pid: int
    role: str
    command: str
    worker: bool


@dataclass
class ProcessCpu:
    """One process's CPU seconds over a measured run."""

    pid: int
    role: str
    command: str
    worker: bool
    cpu_s: float
    #: "" when it ran throughout; else "started during the run" (all its CPU counted).
    note: str = ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) is this machine's loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def listening_inodes(port: int) -> set[int]:
    """The inodes of the TCP sockets listening on ``port`` (any address, IPv4 and IPv6)."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    found.discard(0)
    return found


def socket_holders(inodes: set[int]) -> tuple[list[int], int]:
    """(pids holding any of ``inodes`` open, how many processes' fds could not be read)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders: list[int] = []
    unreadable = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            unreadable += 1
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    holders.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(holders), unreadable


def parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[1])


def ancestors(pid: int) -> list[int]:
    """``pid``, its parent, ... up to (not including) pid 0."""
    chain = [pid]
    while (up := parent(chain[-1])) not in (None, 0) and len(chain) < 100:
        assert up is not None
        chain.append(up)
    return chain


def server_root(listeners: list[int]) -> int:
    """The process that stands for the server of these listening processes (see the module's docstring)."""
    chains = [ancestors(pid) for pid in listeners]
    common = [pid for pid in chains[0] if all(pid in chain for chain in chains[1:])]
    root = common[0] if common else listeners[0]
    up = parent(root)
    if up is not None and _is_supervisor(cmdline(up)):
        root = up
    return root


def _is_supervisor(command: str) -> bool:
    """A ``tensorgate serve`` process itself (not a shell whose command line mentions one)."""
    words = command.split()
    program = Path(words[0]).name if words else ""
    return ("python" in program or program == "tensorgate") and any(s in command for s in SUPERVISORS)


def find_server(port: int) -> tuple[int | None, str]:
    """(the root pid of the server listening on ``port``, how it was found or why not)."""
    inodes = listening_inodes(port)
    if not inodes:
        return None, f"no process on this machine listens on port {port}"
    listeners, unreadable = socket_holders(inodes)
    if not listeners:
        why = f" ({unreadable} processes' file descriptors were unreadable: another user's?)" if unreadable else ""
        return None, f"the socket listening on port {port} belongs to no process this user can see{why}"
    if any("docker-proxy" in cmdline(pid) for pid in listeners):
        return None, (f"port {port} is held by docker-proxy: the server runs in a container; give the host pid "
                      "of its process with --server-pid")
    root = server_root(listeners)
    return root, (f"pid {root}, found from the socket listening on port {port} "
                  f"(listeners {', '.join(map(str, listeners))})")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children."""
    found = [pid]
    index = 0
    while index < len(found):
        found += [c for c in children(found[index]) if c not in found]
        index += 1
    return found


def role_of(pid: int, root: int, command: str, worker_match: tuple[str, ...] = ()) -> tuple[str, bool]:
    """(role, whether it is a worker) of a process in the server's tree."""
    for fragment, role in WORKER_ROLES:
        if fragment in command:
            # The word after the program's: the framework of a runtime worker, the model of a Python stub.
            words = command.split()
            after = next(i for i, word in enumerate(words) if fragment in word) + 1
            return (f"{role} {words[after]}" if after < len(words) else role), True
    for fragment in worker_match:
        if fragment in command:
            return "worker", True
    if pid == root:
        return "server", False
    for fragment, role in OTHER_ROLES:
        if fragment in command:
            return role, False
    return "child", False


class ProcessTree:
    """The server's processes, from ``root`` down, read afresh at each snapshot."""

    def __init__(self, root: int, worker_match: tuple[str, ...] = ()) -> None:
        self.root = root
        self.worker_match = worker_match

    def processes(self) -> list[ServerProcess]:
        found = []
        for pid in descendants(self.root):
            command = cmdline(pid)
            role, worker = role_of(pid, self.root, command, self.worker_match)
            found.append(ServerProcess(pid, role, command, worker))
        return found

    def snapshot(self) -> dict[int, tuple[ServerProcess, float]]:
        taken = {}
        for process in self.processes():
            seconds = cpu_seconds(process.pid)
            if seconds is not None:
                taken[process.pid] = (process, seconds)
        return taken


def cpu_between(before: dict[int, tuple[ServerProcess, float]],
                after: dict[int, tuple[ServerProcess, float]]) -> tuple[list[ProcessCpu], list[int]]:
    """(each process's CPU seconds between two snapshots, the pids that exited in between: their last
    stretch is lost, as /proc forgets a process that has been reaped)."""
    rows = []
    for pid, (process, seconds) in after.items():
        start = before.get(pid)
        rows.append(ProcessCpu(pid, process.role, process.command, process.worker,
                               seconds - (start[1] if start else 0.0), "" if start else "started during the run"))
    return rows, sorted(set(before) - set(after))


def short_command(command: str, width: int = 70) -> str:
    """The command line without the interpreter's path, cut to ``width``."""
    words = command.split()
    if words and "python" in Path(words[0]).name:
        words = ["python", *words[1:]]
    text = " ".join(words)
    return text if len(text) <= width else text[:width - 1] + "…"
