"""Print the requirements of the carpool wheel, one a line: its dependencies and those of the
extras named on the command line, or with ``--only`` just the named projects among them.

    python3 images/requirements.py pyproject.toml [EXTRA...] [--only NAME...]

The images install these in layers of their own, before the wheel, so that a change to the
code rebuilds only the wheel's layer, and torch (most of the worker image) is reinstalled only
when its own requirement changes.
"""

from __future__ import annotations

import argparse
import re
import tomllib


def project_name(requirement: str) -> str:
    """The normalized project name a requirement line starts with (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    if name is None:
        raise SystemExit(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def requirements(pyproject: str, extras: list[str], only: list[str] | None = None) -> list[str]:
    with open(pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"no such extra in {pyproject}: {', '.join(unknown)}")
    found = [*project["dependencies"], *(r for extra in extras for r in optional[extra])]
    if only is None:
        return found
    wanted = {project_name(name) for name in only}
    chosen = [r for r in found if project_name(r) in wanted]
    missing = wanted - {project_name(r) for r in chosen}
    if missing:
        raise SystemExit(f"not among the requirements: {', '.join(sorted(missing))}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--only", nargs="+", metavar="NAME")
    arguments = parser.parse_args()
    print("\n".join(requirements(arguments.pyproject, arguments.extras, arguments.only)))


if __name__ == "__main__":
    main()
