#!/usr/bin/env python3
"""Compile locale/*/LC_MESSAGES/*.po into the .mo files Django reads.

Pure Python (polib, a dev requirement), so neither CI nor a contributor needs
GNU gettext's msgfmt. The .mo files are committed: a deployment installs
only requirements.txt and gets the translations as they were reviewed.
tests/test_i18n.py fails when a .mo is older than its .po; run this then:

    .venv/bin/python scripts/compilemessages.py
"""

import sys
from pathlib import Path

import polib

LOCALE = Path(__file__).resolve().parent.parent / "locale"


def catalogs(root=LOCALE):
    return sorted(root.glob("*/LC_MESSAGES/*.po"))


def compiled(po_path):
    """The .mo bytes of one .po file (polib's output is deterministic)."""
    mo_path = po_path.with_suffix(".mo.tmp")
    polib.pofile(str(po_path)).save_as_mofile(str(mo_path))
    try:
        return mo_path.read_bytes()
    finally:
        mo_path.unlink()


def main():
    for po_path in catalogs():
        po_path.with_suffix(".mo").write_bytes(compiled(po_path))
        print(f"compiled {po_path.relative_to(LOCALE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
