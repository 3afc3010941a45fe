"""Run a command against a throw-away PostgreSQL server: `with_postgres.py -- CMD ...`.

Installs Debian's postgresql if missing, starts a cluster in a temp folder on a
free loopback port (as the `postgres` user when run as root, since PostgreSQL
refuses to run as root), exports DATABASE_URL, runs CMD, then stops and removes
the cluster. Used by `make test-postgres`.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile


def _bin_dir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                       check=True, env=env)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__)
        return 2
    command = argv[argv.index("--") + 1:]
    bin_dir = _bin_dir()
    port = _free_port()
    root = tempfile.mkdtemp(prefix="hv-pg-")
    data = os.path.join(root, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(*args):
        subprocess.run([*as_user, *args], check=True, stdout=subprocess.DEVNULL)

    pg(f"{bin_dir}/initdb", "-D", data, "-U", "hv", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    pg(f"{bin_dir}/pg_ctl", "-D", data, "-o", opts, "-w", "-l", os.path.join(root, "log"), "start")
    try:
        env = {**os.environ, "DATABASE_URL": f"postgres://hv@127.0.0.1:{port}/postgres"}
        print(f"PostgreSQL on 127.0.0.1:{port} ({bin_dir})", flush=True)
        return subprocess.run(command, env=env).returncode
    finally:
        pg(f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
