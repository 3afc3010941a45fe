"""Install and check what the test suite needs beyond pip (run by `make test`).

Nothing here is installed by hand: on a fresh machine this script does it.
"""

import shutil
import subprocess
import sys

# Debian packages the suite uses, with the binary that proves each is there.
DEBIAN_PACKAGES = {}


def main() -> int:
    missing = [pkg for pkg, binary in DEBIAN_PACKAGES.items() if shutil.which(binary) is None]
    if missing:
        print(f"installing Debian packages for the tests: {' '.join(missing)}", flush=True)
        env_cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(env_cmd, check=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
