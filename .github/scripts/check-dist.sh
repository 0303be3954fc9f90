#!/usr/bin/env bash
# Checks the toolkit's distributions before they are published (release.yml runs it on dist/):
#  1. one branchflow wheel and one sdist, of packages/branchflow/pyproject.toml's version, with
#     the metadata PyPI shows: Requires-Python, the extras, the readme, the URLs, the command;
#  2. the wheel and its extras install with the pip a user has (`python3 -m venv`'s, not
#     upgraded) into a new virtualenv, and `pip check` finds nothing broken;
#  3. that install runs: `branchflow --help`, and `branchflow init --check` on this repository
#     (the templates are in the wheel and still write what .github/ holds).
# Usage: check-dist.sh DIST_DIR. Environment: CHECK_DIST_TWINE=1 adds `twine check --strict`
# (uvx fetches twine from PyPI); PYTHON is the interpreter (python3); pip reads its own PIP_*
# settings, e.g. PIP_CONSTRAINT=<file> to install pinned versions.
set -euo pipefail

dist=$(cd "${1:?usage: check-dist.sh DIST_DIR}" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
wheels=("$dist"/branchflow-*.whl)
sdists=("$dist"/branchflow-*.tar.gz)
if [ ${#wheels[@]} -ne 1 ] || [ ${#sdists[@]} -ne 1 ]; then
  echo "check-dist: want one branchflow wheel and one sdist in $dist; found:" "$(ls -A "$dist")" >&2
  exit 1
fi
wheel=${wheels[0]}
sdist=${sdists[0]}

echo "== metadata of $(basename "$wheel") and $(basename "$sdist")"
"$python" - "$wheel" "$sdist" "$root/packages/branchflow/pyproject.toml" <<'PY'
import sys, tarfile, tomllib, zipfile
from email.parser import Parser

wheel, sdist, pyproject = sys.argv[1:]
with open(pyproject, "rb") as file:
    project = tomllib.load(file)["project"]
name, version = project["name"], project["version"]
with zipfile.ZipFile(wheel) as archive:
    meta = Parser().parsestr(archive.read(f"{name}-{version}.dist-info/METADATA").decode())
    scripts = archive.read(f"{name}-{version}.dist-info/entry_points.txt").decode()
with tarfile.open(sdist) as archive:
    pkg_info = Parser().parsestr(archive.extractfile(f"{name}-{version}/PKG-INFO").read().decode())

problems = []
for where, fields in (("wheel", meta), ("sdist", pkg_info)):
    if (fields["Name"], fields["Version"]) != (name, version):
        problems.append(f"{where} is {fields['Name']} {fields['Version']}, not {name} {version}")
if meta["Requires-Python"] != project["requires-python"]:
    problems.append(f"Requires-Python is {meta['Requires-Python']!r}")
extras = set(meta.get_all("Provides-Extra") or [])
if extras != set(project["optional-dependencies"]) or not {"report", "azure"} <= extras:
    problems.append(f"the extras are {sorted(extras)}")
if meta["Description-Content-Type"] != "text/markdown" or not meta.get_payload().strip():
    problems.append("no Markdown readme (long description)")
urls = set(meta.get_all("Project-URL") or [])
problems += [f"no Project-URL {k}" for k, v in project.get("urls", {}).items() if f"{k}, {v}" not in urls]
for command, target in project["scripts"].items():
    if f"{command} = {target}" not in scripts:
        problems.append(f"no console script {command} = {target}")
print("\n".join(f"check-dist: {p}" for p in problems) or f"{name} {version}: metadata ok")
sys.exit(1 if problems else 0)
PY
if [ "${CHECK_DIST_TWINE:-0}" = 1 ]; then
  uvx twine@7.0.0 check --strict "$wheel" "$sdist"
fi

echo "== pip install the wheel with [report,azure] into a new virtualenv"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip --version
"$work/venv/bin/python" -m pip install --quiet "${wheel}[report,azure]"
"$work/venv/bin/python" -m pip check

echo "== run it"
"$work/venv/bin/branchflow" --help
(cd "$root" && "$work/venv/bin/branchflow" init --check)
echo "check-dist: $(basename "$wheel") and $(basename "$sdist") are good"
