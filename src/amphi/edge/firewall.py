"""The edge's per-address connection cap in the kernel: an iptables ``connlimit`` rule on the
edge's port answers a client address's SYN with a TCP reset once that address holds ``cap``
connections to the port. Nothing then stands between a listener and nginx's http server: the
cap costs no hop (nginx's stream module, the other way to cap, proxies every byte once more;
bench/front_probe.py).

It needs root (CAP_NET_ADMIN) and Debian's ``iptables``. Each edge tags its rules
``amphi-edge <host> <port> <tag>``. A *keeper* (``python -m amphi.edge.firewall keep HOST PORT TAG``),
started by the edge in its own session, removes them when the edge's process ends, however it
ends (``PR_SET_PDEATHSIG``, so ``kill -9`` of the edge's process group too); ``install`` also
removes what a lost keeper left on the same address and port.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
import sys

from amphi.core.errors import Unavailable

CHAIN = "INPUT"


def _families(host: str) -> list[tuple[str, int, str | None]]:
    """(iptables binary, address mask, destination or None for any) for an edge bound to ``host``."""
    ip = ipaddress.ip_address(host)  # ValueError: not an address literal
    dest = None if ip.is_unspecified else str(ip)
    if ip.version == 4:
        return [("iptables", 32, dest)]
    if ip.is_unspecified:  # "::" takes IPv4 too (mapped addresses)
        return [("iptables", 32, None), ("ip6tables", 128, None)]
    return [("ip6tables", 128, dest)]


def _binaries(host: str) -> list[str]:
    return [binary for binary, _, _ in _families(host)]


def comment(host: str, port: int, tag: str = "") -> str:
    return f"amphi-edge {host} {port} {tag}"


def rules(host: str, port: int, cap: int, tag: str) -> list[tuple[str, list[str]]]:
    """The rules (binary, arguments after the chain) for an edge on ``host:port``. Pure."""
    return [(binary, ["-p", "tcp", *(["-d", dest] if dest else []), "--dport", str(port), "--syn",
                      "-m", "connlimit", "--connlimit-above", str(cap), "--connlimit-mask", str(mask),
                      "-m", "comment", "--comment", comment(host, port, tag),
                      "-j", "REJECT", "--reject-with", "tcp-reset"])
            for binary, mask, dest in _families(host)]


def unavailable(host: str) -> str | None:
    """Why this process cannot cap connections in the firewall for ``host``, or None if it may try."""
    try:
        binaries = _binaries(host)
    except ValueError:
        return f"the edge binds {host!r}, not an IP address"
    if os.geteuid() != 0:
        return "setting firewall rules needs root (CAP_NET_ADMIN)"
    if missing := [b for b in binaries if shutil.which(b) is None]:
        return f"{', '.join(missing)} is not installed (Debian's iptables: make setup)"
    return None


def _run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=15)


def ours(listing: str, host: str, port: int, tag: str | None = None) -> list[list[str]]:
    """The ``-S`` lines of ``listing`` that are the rules of an edge on ``host:port`` (``tag``'s,
    or any edge's), as arguments that delete them. Pure."""
    want = f'"{comment(host, port, tag)}"' if tag is not None else f'"{comment(host, port)}'
    return [["-D", *args[1:]] for line in listing.splitlines()
            if line.startswith(f"-A {CHAIN} ") and want in line and (args := shlex.split(line))]


def remove(host: str, port: int, tag: str | None = None) -> int:
    """Deletes the rules for ``host:port`` (``tag``'s, or any edge's); how many. Never raises
    for a rule that is already gone."""
    removed = 0
    for binary in _binaries(host):
        listing = _run(binary, "-S", CHAIN)
        if listing.returncode != 0:
            continue
        for args in ours(listing.stdout, host, port, tag):
            removed += _run(binary, *args).returncode == 0
    return removed


def install(host: str, port: int, cap: int, tag: str) -> None:
    """Puts the cap in place (after removing any left for ``host:port``). Raises Unavailable."""
    if reason := unavailable(host):
        raise Unavailable(reason)
    remove(host, port)
    for binary, args in rules(host, port, cap, tag):
        done = _run(binary, "-I", CHAIN, *args)
        if done.returncode != 0:
            remove(host, port, tag)
            raise Unavailable(f"{binary} refused the connection cap: {done.stderr.strip() or done.returncode}")


def installed(host: str, port: int, tag: str | None = None) -> bool:
    """Whether ``host:port`` has a rule (``tag``'s, or any edge's)."""
    return any(ours(_run(binary, "-S", CHAIN).stdout, host, port, tag) for binary in _binaries(host))


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def keeper_command(host: str, port: int, tag: str) -> list[str]:
    return [sys.executable, "-m", "amphi.edge.firewall", "keep", host, str(port), tag]


def keep(host: str, port: int, tag: str) -> None:
    """Waits for a stop signal (the edge ended), then removes the edge's rules. The edge's
    launcher holds the stop signals before this starts (``varnish._arm_keeper``), so one that
    comes while Python starts waits here."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.sigwait(STOP_SIGNALS)
    remove(host, port, tag)


if __name__ == "__main__":  # the keeper: python -m amphi.edge.firewall keep HOST PORT TAG
    if len(sys.argv) != 5 or sys.argv[1] != "keep":
        sys.exit("usage: python -m amphi.edge.firewall keep HOST PORT TAG")
    keep(sys.argv[2], int(sys.argv[3]), sys.argv[4])
