"""The layer rule of DESIGN.md section 2, checked rather than only written down.

Dependencies point one way: commands and views -> worker / task backend /
publisher -> queue and channel protocol -> key names. This test reads every
module of the app with ``ast`` (no import runs, so a module's import-time
side effects cannot hide or add an arrow), collects each import, function-level
ones included, and fails on every arrow a rule below forbids, naming its file
and line.
"""

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_redis

ROOT = Path(__file__).resolve().parent.parent
APP = "tasks"

# The modules that speak Redis and nothing else: they know no ORM and no HTTP.
PROTOCOL = (
    "tasks.queue.keys",
    "tasks.queue.scripts",
    "tasks.queue.envelope",
    "tasks.queue.reliable",
    "tasks.queue.connection",
    "tasks.queue.presence",
    "tasks.channel.subscription",
)
# Modules that answer requests. What two of them share lives in a module that
# is not a view (web/status.py, web/auth.py, web/access.py, web/errors.py, web/health.py's
# probe), so each view reads on its own.
VIEWS = ("tasks.web.views", "tasks.web.api", "tasks.web.metrics", "tasks.web.taskpage", "tasks.web.dashboard")


@dataclass(frozen=True)
class Rule:
    """Modules under ``importers`` import nothing under ``forbidden`` (dotted
    prefixes), except what falls under ``exempt``."""

    why: str
    importers: tuple
    forbidden: tuple
    exempt: tuple = ()


RULES = (
    Rule("the protocol knows no ORM", PROTOCOL, ("django.db", "tasks.models")),
    Rule("the protocol knows no HTTP", PROTOCOL, ("django.http", "django.urls", "tasks.web")),
    Rule("models know no Redis", ("tasks.models",), ("redis", "tasks.queue", "tasks.worker", "tasks.channel", "tasks.web")),
    # Catching redis-py's exceptions is not calling Redis; holding a client
    # (get_redis), a key or a script is. Asking the protocol a question is fine.
    Rule(
        "views never build a Redis key or call Redis",
        ("tasks.web",),
        ("redis", "tasks.queue.keys", "tasks.queue.scripts", "tasks.queue.connection.get_redis"),
        exempt=("redis.exceptions",),
    ),
    Rule("a view module imports no other view module", VIEWS, VIEWS),
    Rule(
        "the queue protocol sits below the worker, the channel, the web and the commands",
        ("tasks.queue",),
        ("tasks.worker", "tasks.channel", "tasks.web", "tasks.management"),
    ),
    Rule("the worker sits below the web and the commands", ("tasks.worker",), ("tasks.web", "tasks.management")),
    Rule(
        "the channel sits below the worker, the web and the commands",
        ("tasks.channel",),
        ("tasks.worker", "tasks.web", "tasks.management"),
    ),
    Rule(
        "system checks run in every process: they import no worker, channel, web or command",
        ("tasks.checks",),
        ("tasks.worker", "tasks.channel", "tasks.web", "tasks.management"),
    ),
)


@dataclass(frozen=True)
class Allowance:
    """A known wrong arrow, tolerated until the change that removes it merges."""

    importer: str
    target: str  # dotted prefix of what it imports
    fixed_by: str


# Arrows other issue-9 changes are removing right now. Delete each entry when
# its fix merges: test_every_allowance_is_still_needed says which.
KNOWN_UNTIL_MERGED: tuple = ()


@dataclass(frozen=True)
class Arrow:
    importer: str
    target: str
    path: Path
    line: int

    def describe(self, root):
        return f"{self.path.relative_to(root)}:{self.line} {self.importer} -> {self.target}"


def within(name, prefixes):
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def module_name(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path, root):
    """Every import in one file, wherever it sits (module level, inside a
    function, under ``if TYPE_CHECKING``), as arrows to dotted names:
    ``from a.b import c`` points at ``a.b.c``, which may be a module or a name."""
    importer = module_name(path, root)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Arrow(importer, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Arrow(importer, target, path, node.lineno)


def all_arrows(root, app=APP):
    for path in sorted((root / app).rglob("*.py")):
        yield from imports_of(path, root)


def broken_rules(arrow, rules):
    return [
        rule
        for rule in rules
        if within(arrow.importer, rule.importers)
        and within(arrow.target, rule.forbidden)
        and not within(arrow.target, rule.exempt)
        and not within(arrow.target, (arrow.importer,))
    ]


def violations(arrows, rules=RULES):
    """(arrow, rule) for each arrow against a rule, in file order."""
    return [(arrow, rule) for arrow in arrows for rule in broken_rules(arrow, rules)]


def allowed(arrow, allowances):
    return any(arrow.importer == a.importer and within(arrow.target, (a.target,)) for a in allowances)


def report(found, root):
    return "\n".join(f"  {arrow.describe(root)}  ({rule.why})" for arrow, rule in found)


def test_no_import_points_against_the_layers():
    found = [(arrow, rule) for arrow, rule in violations(all_arrows(ROOT)) if not allowed(arrow, KNOWN_UNTIL_MERGED)]
    if found:
        pytest.fail("imports against DESIGN.md section 2's direction:\n" + report(found, ROOT), pytrace=False)


def test_every_allowance_is_still_needed():
    """An allowance whose arrow is gone would hide the arrow coming back."""
    wrong = [arrow for arrow, _ in violations(all_arrows(ROOT))]
    stale = [a for a in KNOWN_UNTIL_MERGED if not allowed_by_any(a, wrong)]
    if stale:
        lines = "\n".join(f"  {a.importer} -> {a.target} ({a.fixed_by})" for a in stale)
        pytest.fail("fixed, delete from KNOWN_UNTIL_MERGED:\n" + lines, pytrace=False)


def allowed_by_any(allowance, arrows):
    return any(allowed(arrow, [allowance]) for arrow in arrows)


def test_the_walk_sees_the_app():
    """The rules are only as good as the walk: it must find the app's modules
    and their imports, or every rule would pass on nothing."""
    targets = {(arrow.importer, arrow.target) for arrow in all_arrows(ROOT)}
    assert ("tasks.queue.reliable", "tasks.queue.keys") in targets
    assert ("tasks.models", "django.db.models") in targets
    assert {importer for importer, _ in targets} >= {"tasks.queue.envelope", "tasks.models", *VIEWS}


# --- the rule engine itself, on planted trees --------------------------------


def plant(root, module, source):
    """Write ``source`` as module ``module`` (a dotted name) under ``root``."""
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for package in path.relative_to(root).parents:
        if str(package) != ".":
            (root / package / "__init__.py").touch()
    path.write_text(textwrap.dedent(source))
    return path


def first_forbidden_other_than(rule, importer):
    return next(target for target in rule.forbidden if not within(target, (importer,)) and not within(importer, (target,)))


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.why)
def test_each_rule_catches_a_planted_arrow(tmp_path, rule):
    importer = rule.importers[0]
    target = first_forbidden_other_than(rule, importer)
    path = plant(tmp_path, importer, f"import json\n\n\ndef later():\n    import {target}\n")
    found = violations(all_arrows(tmp_path))
    assert [(arrow.describe(tmp_path), r) for arrow, r in found] == [
        (f"{path.relative_to(tmp_path)}:5 {importer} -> {target}", rule)
    ]


def test_from_imports_relative_imports_and_file_lines_are_reported(tmp_path):
    plant(
        tmp_path,
        "tasks.queue.reliable",
        """\
        from redis.exceptions import RedisError

        from . import keys
        from ..models import TaskRecord


        def handler():
            from tasks.web.views import index
        """,
    )
    found = violations(all_arrows(tmp_path))
    assert [arrow.describe(tmp_path) for arrow, _ in found] == [
        "tasks/queue/reliable.py:4 tasks.queue.reliable -> tasks.models.TaskRecord",
        "tasks/queue/reliable.py:8 tasks.queue.reliable -> tasks.web.views.index",
        "tasks/queue/reliable.py:8 tasks.queue.reliable -> tasks.web.views.index",
    ]
    assert [rule.why for _, rule in found] == [
        "the protocol knows no ORM",
        "the protocol knows no HTTP",
        "the queue protocol sits below the worker, the channel, the web and the commands",
    ]


def test_exempt_names_and_look_alike_prefixes_pass(tmp_path):
    plant(
        tmp_path,
        "tasks.web.views",
        """\
        from redis.exceptions import RedisError
        from tasks.web.status import collect_status
        from tasks.web.viewsets import nothing
        from tasks.queue.reliable import QueueFull
        """,
    )
    plant(tmp_path, "tasks.modelsx", "import redis\n")
    assert violations(all_arrows(tmp_path)) == []


def test_an_allowance_covers_only_its_own_arrow(tmp_path):
    plant(tmp_path, "tasks.web.metrics", "from tasks.web.api import authenticate\nfrom tasks.web.views import index\n")
    found = violations(all_arrows(tmp_path))
    allowances = [Allowance("tasks.web.metrics", "tasks.web.api", "planted")]
    assert [arrow.target for arrow, _ in found if not allowed(arrow, allowances)] == ["tasks.web.views.index"]
