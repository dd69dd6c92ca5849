"""`pip install .` asks for the same runtime dependencies as `make install`."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_install_requires_is_the_runtime_part_of_requirements_txt() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    declared = setup["options"]["install_requires"].split()
    runtime = (ROOT / "requirements.txt").read_text().split("\n\n")[0].splitlines()

    assert declared == [line for line in runtime if not line.startswith("#")]
