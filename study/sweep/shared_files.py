"""What the machines of a multi-machine launch can share: files on a network file system that gives what
each file needs (a lock that reaches the other machines), and servers that are not each machine itself.
The mount table is read from /proc/mounts."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

MOUNTS = Path("/proc/mounts")
# File systems that other machines mount too; a file anywhere else is this machine's alone.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "cifs", "smb3", "glusterfs",
                       "fuse.glusterfs", "panfs", "wekafs", "fuse.sshfs", "9p", "virtiofs"}
# Mount options under which flock() locks only this machine's processes (NFS without its lock manager,
# Lustre without -o flock), so two nodes could both "hold" a trial folder
LOCAL_LOCK_OPTIONS = {"nolock", "local_lock=all", "local_lock=flock", "localflock", "noflock"}
LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def mount_of(path: Path) -> tuple[str, set[str]]:
    """The type and options of the mount holding `path` (the longest mount point above it)."""
    path, best, found = Path(path).resolve(), "", ("unknown", set())
    for line in MOUNTS.read_text().splitlines():
        _, mount, fstype, options, *_ = line.split()
        mount = mount.replace("\\040", " ")
        if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > len(best):
            best, found = mount, (fstype, set(options.split(",")))
    return found


def unshared(storage: str | None, journal: Path, tracking_uri: str, runs_dir: Path) -> list[str]:
    """What compute nodes on other machines could not share safely, each said with why."""
    problems = []
    files = {"the runs/ folder (checkpoints, trial folders)": runs_dir}
    sqlite = {}
    if not storage:
        files["the Optuna journal"] = journal
    elif storage.startswith("sqlite:///"):
        sqlite["the Optuna SQLite storage"] = Path(storage.removeprefix("sqlite:///"))
    if tracking_uri.startswith("sqlite:///"):
        sqlite["the MLflow SQLite store"] = Path(tracking_uri.removeprefix("sqlite:///"))
    elif "://" not in tracking_uri or tracking_uri.startswith("file:"):
        files["the MLflow file store"] = Path(tracking_uri.removeprefix("file://"))
    for what, path in {**files, **sqlite}.items():
        kind, options = mount_of(path.parent if not path.exists() else path)
        if kind not in NETWORK_FILESYSTEMS:
            problems.append(f"{what} {path} is on this machine's {kind} file system")
        elif what in sqlite:  # SQLite's own documentation: its locking is not to be trusted over a network
            problems.append(f"{what} {path} is on a network file system ({kind}), where SQLite's locks fail "
                            "and several machines writing one database corrupt it")
        elif what.startswith("the runs/") and options & LOCAL_LOCK_OPTIONS:
            problems.append(f"{what} {path} is mounted with {', '.join(sorted(options & LOCAL_LOCK_OPTIONS))}: "
                            "its file locks do not reach the other machines, which could train one point twice")
    for what, url in (("--storage", storage or ""), ("--tracking-uri", tracking_uri)):
        host = urlparse(url).hostname if "://" in url else None
        if host and (host in LOOPBACK or host.startswith("127.")):
            problems.append(f"{what} {url} points at {host}, which is each node itself")
    return problems
