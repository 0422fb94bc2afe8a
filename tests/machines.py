"""Machines for Ray's cluster launcher on this one machine: an SSH server at 127.0.0.1 and
127.0.0.2 (port 22, the launcher knows no other), in PID and mount namespaces of their own.

Why namespaces: `ray stop`, which the head's start commands and `ray down` run, stops every Ray
process it can see, and this machine may run other Ray work (another test session, a developer's
search). In their own PID namespace the cluster's processes see only each other, and killing the
namespace's first process ends every one of them. In their own mount namespace the machines get a
home of their own (root's home in their /etc/passwd, so `~` never means this machine's /root and
the token there is never touched) and a /tmp/ray of their own (Ray's session files and the
address `--address auto` reads).

    python -m tests.machines FOLDER    # start them by hand, until Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ADDRESSES = ("127.0.0.1", "127.0.0.2")
PACKAGES = {"sshd": "openssh-server", "rsync": "rsync"}  # command: Debian package
# pid 1 of the namespace: binds the machines' passwd and /tmp/ray, starts sshd, and reaps every
# process that ends up its child (Ray's daemons outlive the `ray start` that spawned them).
INIT = """
import os, subprocess, sys
passwd, ray_tmp, config, log = sys.argv[1:]
for source, target in ((passwd, "/etc/passwd"), (ray_tmp, "/tmp/ray")):
    subprocess.run(["mount", "--bind", source, target], check=True)
os.makedirs("/run/sshd", exist_ok=True)
sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stderr=open(log, "ab"))
while os.wait()[0] != sshd.pid:
    pass
"""


class Unavailable(Exception):
    """These machines cannot run here; the message says why."""


@dataclass
class Machines:
    """Two SSH machines sharing this machine's files, network and Python, not its processes."""

    folder: Path  # keys, sshd's config and log, the machines' home
    home: Path  # root's home as the machines see it
    key: Path  # the private key that logs in as root to either address
    unshare: subprocess.Popen  # its one child is the namespace's first process
    namespace: str = ""  # the PID namespace, as /proc/PID/ns/pid names it

    def processes(self) -> list[psutil.Process]:
        """Every process of the machines, their sshd and first process included."""
        found = []
        for process in psutil.process_iter():
            try:
                if os.readlink(f"/proc/{process.pid}/ns/pid") == self.namespace:
                    found.append(process)
            except OSError:
                continue
        return found

    def ssh(self, address: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{address}",
             command], capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """Kill the namespace's first process, which ends every process in it; return once
        they are all gone (unshare exits after its child, and the child after all the rest)."""
        try:
            for init in psutil.Process(self.unshare.pid).children():
                init.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
        try:
            self.unshare.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.unshare.kill()
            self.unshare.wait()


def start(folder: Path) -> Machines:
    """Start the machines with their home in `folder`; raise Unavailable when this machine cannot
    (not root, no namespaces, port 22 taken, sshd or rsync missing and not installable)."""
    if os.geteuid() != 0:
        raise Unavailable("needs root: sshd on port 22 and namespaces of its own")
    for address in ADDRESSES:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((address, 22)) == 0:
                raise Unavailable(f"port 22 of {address} is taken already")
    install_missing()
    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    key = folder / "id_ed25519"
    for path in (key, folder / "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)
    shutil.copy(key.with_suffix(".pub"), home / ".ssh" / "authorized_keys")
    passwd = folder / "passwd"
    passwd.write_text("".join(
        f"root:x:0:0:root:{home}:/bin/bash\n" if line.startswith("root:") else line
        for line in Path("/etc/passwd").read_text().splitlines(keepends=True)))
    ray_tmp = folder / "ray-tmp"
    ray_tmp.mkdir()
    Path("/tmp/ray").mkdir(exist_ok=True)
    config = folder / "sshd_config"
    config.write_text("\n".join([
        *(f"ListenAddress {address}:22" for address in ADDRESSES),
        f"HostKey {folder / 'host_ed25519'}",
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # Ray opens many sessions at once (file mounts, commands, the head's autoscaler).
        "MaxStartups 100",
        "MaxSessions 100",
        "LogLevel ERROR",
    ]) + "\n")
    unshare = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
         sys.executable, "-c", INIT, str(passwd), str(ray_tmp), str(config),
         str(folder / "sshd.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    machines = Machines(folder, home, key, unshare)
    deadline = time.monotonic() + 20
    while not all(machines.ssh(address, "true").returncode == 0 for address in ADDRESSES):
        if unshare.poll() is not None or time.monotonic() > deadline:
            machines.stop()
            log = (folder / "sshd.log").read_text() if (folder / "sshd.log").exists() else ""
            raise Unavailable(f"sshd on the loopback addresses did not start: "
                              f"{unshare.stderr.read().decode()[-500:]}{log[-500:]}")
        time.sleep(0.5)
    init = psutil.Process(unshare.pid).children()[0]
    machines.namespace = os.readlink(f"/proc/{init.pid}/ns/pid")
    return machines


def install_missing() -> None:
    """sshd and rsync from the distribution's packages, where they are missing."""
    missing = [package for command, package in PACKAGES.items()
               if not shutil.which(command) and not Path(f"/usr/sbin/{command}").exists()]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(missing)} missing, and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            raise Unavailable(f"could not install {', '.join(missing)}: {done.stderr[-500:]}")


if __name__ == "__main__":
    started = start(Path(sys.argv[1]))
    print(f"machines up: ssh -i {started.key} root@127.0.0.2  (home {started.home})", flush=True)
    try:
        started.unshare.wait()
    except KeyboardInterrupt:
        started.stop()
