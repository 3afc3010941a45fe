"""Install and check what the test suite needs beyond pip (run by `make test`).

Nothing here is installed by hand: on a fresh machine this script does it.
"""

import shutil
import subprocess
import sys

# Debian packages the suite uses, with the binary that proves each is there.
DEBIAN_PACKAGES = {
    "chromium": "chromium",  # browser tests (Playwright drives /usr/bin/chromium)
    "poppler-utils": "pdftoppm",  # PDF report pages checked as images
    "redis-server": "redis-server",  # Celery queue tests
}


def main() -> int:
    missing = [pkg for pkg, binary in DEBIAN_PACKAGES.items() if shutil.which(binary) is None]
    if missing:
        print(f"installing Debian packages for the tests: {' '.join(missing)}", flush=True)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
