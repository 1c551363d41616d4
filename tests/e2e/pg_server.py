"""A real PostgreSQL for the end-to-end tests: initdb into a temporary
folder, pg_ctl on a Unix socket there (no TCP port), stopped and removed by
stop(). As root the server runs as the `postgres` user."""
import glob
import os
import random
import shutil
import subprocess
import tempfile


class PgServer:
    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries (install postgresql)")
        self.bin = os.path.dirname(found[-1])
        self.dir = tempfile.mkdtemp(prefix="mergeserve-pg-")
        self.port = random.randint(20000, 40000)
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([f"{self.bin}/initdb", "-D", f"{self.dir}/data", "-U", "postgres",
                   "--auth=trust", "--no-sync", "--locale=C", "-E", "UTF8"])
        self._run([f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-l",
                   f"{self.dir}/server.log", "-w", "-t", "60", "-o",
                   f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off",
                   "start"])

    def _run(self, argv):
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        subprocess.run(argv, check=True, capture_output=True)

    def create_database(self, name):
        self._run(["psql", "-X", "-q", "-h", self.dir, "-p", str(self.port), "-U",
                   "postgres", "-d", "postgres", "-c", f"CREATE DATABASE {name}"])
        return f"postgresql://postgres@/{name}?host={self.dir}&port={self.port}"

    def stop(self):
        try:
            self._run([f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-m",
                       "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
