"""Check a pull request's report artifact before a trusted job posts it with CML.

    python3 .github/scripts/check_pr_report.py <artifact folder>

The artifact comes from a build of the pull request's code, so a fork controls it. Two
things in it are trusted only after this check:

- `pr-number.txt` must be a plain PR number; it is then written as `pr=<n>` to
  `$GITHUB_OUTPUT` for `cml comment update --target=pr/<n>`.
- `report.md` must link only to `https://` URLs and to `report_files/<name>.png`. CML
  resolves every link, image and definition target against the report's folder and uploads
  any file it finds to a public asset server, so a target such as `/etc/passwd` or
  `ab:/../../etc/passwd` would publish a file of the runner.

Standard library only: this runs before (and without) installing anything.
"""

from __future__ import annotations

import html
import os
import re
import sys
from pathlib import Path

PR_NUMBER = re.compile(r"[0-9]{1,10}")
IMAGE = re.compile(r"report_files/[A-Za-z0-9_][A-Za-z0-9_.-]*\.png")
URL = re.compile(r"https://[A-Za-z0-9._~:/?#@!$'*+,;=%-]+")
# Where CommonMark puts a link destination: after `](` (inline links and images), after
# `]:` (definitions, also inside quotes and lists) and in `<scheme:...>` autolinks.
INLINE = re.compile(r"\]\(\s*([^\s)]*)")
DEFINITION = re.compile(r"\]:\s*(\S*)")
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*)>")
ESCAPED = re.compile(r"\\(.)")


def check_number(text: str) -> str | None:
    """The PR number, or None unless `text` is one."""
    number = text.strip()
    return number if PR_NUMBER.fullmatch(number) else None


def bad_targets(markdown: str) -> list[str]:
    """Link targets that are neither an https URL nor an image of the report."""
    found = [m[1] for pattern in (INLINE, DEFINITION, AUTOLINK) for m in pattern.finditer(markdown)]
    return [target for target in found if not _allowed(target)]


def _allowed(target: str) -> bool:
    decoded = ESCAPED.sub(r"\1", html.unescape(target))  # as the markdown parser reads it
    if decoded != target or ".." in target:
        return False
    return bool(IMAGE.fullmatch(target) or URL.fullmatch(target))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_pr_report.py <artifact folder>", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    try:
        number = check_number((folder / "pr-number.txt").read_text(encoding="utf-8"))
        markdown = (folder / "report.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: unreadable artifact: {exc}", file=sys.stderr)
        return 1
    problems = [] if number else ["pr-number.txt does not hold a PR number"]
    problems += [f"report.md links to {target!r}" for target in bad_targets(markdown)]
    if problems:
        print("error: refusing to post this report:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as handle:
            handle.write(f"pr={number}\n")
    print(f"report for PR #{number} checked")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
