"""`zoo new family NAME`: generate a separately installable plugin package for a new family.

The generated package works before anyone edits it: a GenerativeModel subclass (a diagonal
Gaussian to start from, with the three methods to fill in), its hooks and two registry entries,
a pyproject with the ``zoo`` entry point, and tests that run the conformance kit.
"""
from __future__ import annotations

import re
from pathlib import Path

from zoo_core.errors import ZooError

TEMPLATES = Path(__file__).resolve().parent / "templates" / "family"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def new_family(zoo, name: str, directory: str | Path = ".") -> Path:
    """Write ``<directory>/zoo-<name>/`` and return its path."""
    if not NAME_PATTERN.match(name):
        raise ZooError(f"family name '{name}' must be lower case letters, digits and underscores, "
                       f"starting with a letter (e.g. my_flow)")
    if name in zoo.plugins.families:
        raise ZooError(f"a family named '{name}' is already registered (by plugin "
                       f"'{zoo.plugins.families[name].plugin}'); choose another name")
    target = Path(directory) / f"zoo-{name}"
    if target.exists():
        raise ZooError(f"{target} already exists; remove it or choose another --dir")
    fields = {"name": name, "module": f"zoo_{name}", "cls": class_name(name)}
    templates = sorted(TEMPLATES.rglob("*.tmpl"))
    if not templates:
        raise ZooError(f"the family templates are missing from {TEMPLATES}")
    try:
        for template in templates:
            relative = template.relative_to(TEMPLATES).with_suffix("")  # drop .tmpl
            parts = [fields["module"] if p == "package" else p for p in relative.parts]
            out = target.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(template.read_text().format(**fields))
    except OSError as exc:
        raise ZooError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
