# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py bootstrap script that ansible-test downloads for its sanity venvs.

ansible-test runs this file (cached as ~/.ansible/test/cache/get_pip_<version>.py) inside a new virtual
environment with pip's install arguments. Machines that reach only the package registries cannot fetch the
original script; this one bootstraps the bundled pip with ensurepip, then installs the requested packages
(pip==<version>, setuptools, wheel) from the configured package index.
"""

from __future__ import annotations

import subprocess
import sys


def main() -> None:
    # In a child process: ensurepip sets PIP_CONFIG_FILE=/dev/null in its own environment, which would hide the
    # machine's pip configuration (index, certificates) from the install below.
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    main()
