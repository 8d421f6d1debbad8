"""Print the requirements of the carpool wheel, one a line: its dependencies and those of the
extras named on the command line.

    python3 images/requirements.py pyproject.toml [EXTRA...]

The images install these in a layer of their own, before the wheel, so that a change to the
code rebuilds only the wheel's layer and a change to the dependencies rebuilds the rest.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"no such extra in {pyproject}: {', '.join(unknown)}")
    return [*project["dependencies"], *(r for extra in extras for r in optional[extra])]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
