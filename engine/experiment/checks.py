"""What an edit must pass before it is committed and reaches a GPU, and what its change does.

An edit is refused, in this order, when it changes a protected file, touches a file the goal file
does not list as editable, changes nothing, does not compile, or changes only comments, blank
lines, docstrings or formatting (its syntax tree, without docstrings, is the parent's). A refused
edit is recorded as `rejected` and its reason goes back to the agent. `code_hash` identifies code
by the same syntax tree, so a second edit that differs from an earlier one only in its comments,
formatting or the spelling of its numbers (`3e-3` and `0.003`, `1_000` and `1000`: the tree holds
their values) is refused as a duplicate.

A change is randomness-only when its only effect is on random state: the syntax trees of parent
and child differ, and are equal once randomness is taken out of both. What is taken out is decided
by the tree and the data flow, never by the names of variables or words in comments:
- seed-setting calls (`_SEEDERS`): a statement goes, a call inside an expression becomes its
  receiver (`torch.Generator().manual_seed(9)` becomes `torch.Generator()`);
- random generators' constructors (`_GENERATORS`) lose their arguments;
- a draw (`_DRAWS`) whose result is thrown away goes: it only moves the random stream;
- a seed variable goes: a name the module assigns and reads only in the arguments of the calls
  above (`torch.manual_seed(MY_SEED)`), or in the value of another seed variable;
- an assignment to names read nowhere goes, when its value draws or builds randomness and is
  made only of random calls, constants, names and attribute access
  (`rng = np.random.default_rng(3)`, `_ = torch.randn(7)`, never used).
A randomness-only child can win only on noise. A false alarm costs nothing: every promotion is
confirmed anyway, and the flag is only told to the agent and recorded.
"""

from __future__ import annotations

import ast
import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from engine.experiment.spec import Spec
from engine.experiment.syntax import parse

if TYPE_CHECKING:  # the protocol names this module's code_hash for the agents
    from engine.protocol import Proposal

# What a call's name ends with, for each kind of random API (torch, numpy, random, jax, ...).
_SEEDERS = {"manual_seed", "seed", "manual_seed_all", "set_seed", "set_rng_state", "seed_all"}
_GENERATORS = {"Generator", "default_rng", "Random", "RandomState", "PRNGKey", "SeedSequence",
               "PCG64", "Philox", "MT19937"}
_DRAWS = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
          "normal", "uniform", "random", "bernoulli", "multinomial", "choice", "sample",
          "getrandbits", "integers", "standard_normal", "exponential", "poisson", "permutation"}
_RANDOM = _SEEDERS | _GENERATORS | _DRAWS
# Besides calls in `_RANDOM`, what the value of a dead assignment may be made of for it to go.
_INERT = (ast.Constant, ast.Name, ast.Attribute, ast.expr_context, ast.keyword, ast.Tuple)
_ASSIGNMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign)


class Refused(ValueError):
    """An edit the engine will not run; the message is the reason the agent is told."""


def apply_proposal(parent: dict[str, str], proposal: Proposal, spec: Spec) -> dict[str, str]:
    """The full file set after `proposal`, or `Refused` when it changes what it may not, changes
    nothing, does not compile, or would behave as its parent does."""
    for name in sorted(proposal.files):
        if name in spec.protected_files:
            raise Refused(f"it changes {name}, which is protected")
        if name not in spec.editable_files:
            raise Refused(f"it touches {name}, which the goal file does not list as editable")
    changed = {name: text for name, text in proposal.files.items() if parent.get(name) != text}
    if not changed:
        raise Refused("it changes nothing")
    for name, text in changed.items():
        if name.endswith(".py"):
            try:
                compile(text, name, "exec")
            except SyntaxError as error:
                where = f"line {error.lineno}: {error.msg}" if error.lineno else error.msg
                raise Refused(f"{name} does not compile: {where}") from None
    if all(name in parent and name.endswith(".py")
           and _canonical(name, parent[name]) == _canonical(name, text)
           for name, text in changed.items()):
        raise Refused("it changes only comments, blank lines, docstrings or formatting: "
                      "the code would behave as before")
    return {**parent, **changed}


def code_hash(files: dict[str, str], editable: tuple[str, ...]) -> str:
    """Identifies the code of an experiment, for refusing duplicates: Python files by their
    syntax tree without docstrings, so comments, formatting and the spelling of numbers do not
    count (a number's type does: `1e3` is not `1000`); a file that does not parse, by its text."""
    digest = hashlib.sha256()
    for name in sorted(editable):
        canonical = _canonical(name, files.get(name, ""))
        digest.update(name.encode() + b"\0" + canonical.encode() + b"\0")
    return digest.hexdigest()


def changes_only_randomness(parent: dict[str, str], child: dict[str, str]) -> bool:
    """Whether the child's code differs from the parent's only in its random state (a seed, a
    generator, a draw nothing uses): such a child can only win on noise. A change of comments or
    formatting alone is no change, so not randomness-only either."""
    changed = [name for name in sorted(set(parent) | set(child))
               if parent.get(name) != child.get(name)]
    differs = False
    for name in changed:
        if not name.endswith(".py") or name not in parent or name not in child:
            return False
        before, after = _code(parent[name]), _code(child[name])
        if before is None or after is None:
            return False
        if before.canonical == after.canonical:
            continue
        differs = True
        # Most changes touch no statement with anything random in it: no need to take randomness
        # out of both trees (tens of ms on the bundled train.py) to see that.
        touching = before.random_names | after.random_names
        removed = Counter(before.dumps) - Counter(after.dumps)
        added = Counter(after.dumps) - Counter(before.dumps)
        if not any(statement.touches(touching) for code, dumps in
                   ((before, removed), (after, added))
                   for statement in code.statements if statement.dump in dumps):
            return False
        if _random_free(parent[name]) != _random_free(child[name]):
            return False
    return differs


@dataclass(frozen=True, slots=True)
class _Statement:
    """What the checks read of one top-level statement of a normalised syntax tree."""

    dump: str
    seeding: frozenset[str]  # the names read in the arguments of its seeders and generators
    names: frozenset[str]  # every name it mentions
    calls_random: bool  # whether it calls a random API (`_RANDOM`)

    def touches(self, names: frozenset[str]) -> bool:
        """Whether it calls a random API or mentions one of `names`."""
        return self.calls_random or not self.names.isdisjoint(names)


@dataclass(frozen=True)
class _Code:
    """A Python file's normalised syntax tree, as the checks read it. The tree itself is not
    kept: the garbage collector walked the nodes of every cached tree again and again, a fifth
    of the time of a 256-GPU simulated search (benchmarks/simulate.py)."""

    statements: tuple[_Statement, ...]  # its top-level statements
    dumps: tuple[str, ...]  # the statements' dumps, which every check reads
    random_names: frozenset[str]  # the random APIs, and every name read where randomness is seeded

    @property
    def canonical(self) -> str:
        return "\n".join(self.dumps)


# A parent is read again for each of its children, and a search proposes on the parents of all
# its islands in turn: with 64 entries, a 256-GPU simulated search (benchmarks/simulate.py) missed
# a third of its lookups, half of those for code analysed before.
@lru_cache(maxsize=1024)
def _code(source: str) -> _Code | None:
    """`source` analysed once; None when it does not parse."""
    try:
        tree = _normalised(source)
    except (SyntaxError, ValueError):
        return None
    statements = _analysed(source, tree)
    seeding = set().union(*(statement.seeding for statement in statements))
    # and the names the values of those names read (`MY_SEED = BASE + SEED`), and so on
    while seeding and (grown := {node.id for statement in tree.body
                                 if _assigned_names(statement) & seeding
                                 and getattr(statement, "value", None) is not None
                                 for node in ast.walk(statement.value)
                                 if isinstance(node, ast.Name)} - seeding):
        seeding |= grown
    return _Code(statements, tuple(statement.dump for statement in statements),
                 frozenset(_RANDOM | seeding))


# A statement's text and columns -> what the checks read of it. Each entry takes about 0.8 KB,
# and a search adds one or two a proposal: at 100,000 the cache was the largest part of the
# driver's growth over a night (benchmarks/soak.py). 16,384 still holds every statement of the
# parents of 256 islands' heads and archives, which share most of theirs.
_ANALYSED: dict[tuple[str, int, int], _Statement] = {}
_ANALYSED_KEPT = 16_384


def _analysed(source: str, tree: ast.Module) -> tuple[_Statement, ...]:
    """Each top-level statement of `source`'s normalised tree, analysed. A child shares all but
    a few statements with its parent, and walking and dumping them was most of the cost of
    admitting it, so each is looked up by its lines and columns first (two statements may share
    a line)."""
    if len(_ANALYSED) > _ANALYSED_KEPT:
        _ANALYSED.clear()
    lines = io.StringIO(source, newline="").readlines()  # split where ast splits lines
    analysed = []
    for statement in tree.body:
        decorators = getattr(statement, "decorator_list", None)
        first = decorators[0].lineno if decorators else statement.lineno
        text = "".join(lines[first - 1:statement.end_lineno])
        key = (text, statement.col_offset, statement.end_col_offset)
        if key not in _ANALYSED:
            # A statement that names no seeder or generator needs no walk to find one.
            seeding = (frozenset(node.id for node in _in_seeding_arguments(statement)
                                 if isinstance(node, ast.Name))
                       if any(name in text for name in _SEEDERS | _GENERATORS) else frozenset())
            nodes = list(ast.walk(statement))
            _ANALYSED[key] = _Statement(
                ast.dump(statement), seeding,
                frozenset(node.id for node in nodes if isinstance(node, ast.Name)),
                any(_called(node) in _RANDOM for node in nodes))
        analysed.append(_ANALYSED[key])
    return tuple(analysed)


@lru_cache(maxsize=64)
def _random_free(source: str) -> str:
    """The dump of a file's normalised tree with its randomness taken out."""
    return ast.dump(_without_randomness(_normalised(source)))


def _canonical(name: str, text: str) -> str:
    """The text that stands for a file's code: the dumps of its normalised syntax tree's
    statements for Python (a dump always parses, so it never equals the text of a file that does
    not), else its text."""
    code = _code(text) if name.endswith(".py") else None
    return text if code is None else code.canonical


def _normalised(source: str) -> ast.Module:
    """The syntax tree of `source` without the statements that do nothing: docstrings, any other
    constant alone on a line, and `pass`, so that an emptied body equals a `pass`."""
    tree = parse(source)
    _drop(tree, lambda statement: isinstance(statement, ast.Pass) or (
        isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)))
    return tree


def _drop(tree: ast.AST, unwanted: Callable[[ast.stmt], bool]) -> None:
    """Takes the statements `unwanted` picks out of every body in `tree`, in place. Bodies hang
    only off statements, except handlers and match cases, so expressions are not visited (a
    third of the cost of admitting a proposal, when they were)."""
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        for field in _BODIES:
            value = getattr(node, field, None)
            if not isinstance(value, list):
                continue
            if value and isinstance(value[0], ast.stmt):
                value = [statement for statement in value if not unwanted(statement)]
                setattr(node, field, value)
            nodes.extend(value)


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _without_randomness(tree: ast.Module) -> ast.Module:
    """`tree` with its randomness taken out (see the module's docstring), in place."""
    # Every read of a seed variable is in arguments that _RandomCalls takes out, so its
    # assignments go too: a seed variable added, removed or changed leaves the same tree.
    seed_variables = _seed_variables(tree)
    tree.body = [statement for statement in tree.body
                 if not _assigns_only(statement, seed_variables)]
    tree = _RandomCalls().visit(tree)
    # Taking out one dead assignment may leave the names its value read dead in turn.
    while dead := _dead_assignments(tree):
        _drop(tree, lambda statement: id(statement) in dead)
    return tree


class _RandomCalls(ast.NodeTransformer):
    """Takes out seed-setting calls, thrown-away draws and the arguments of generators."""

    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        if _called(node.value) in _SEEDERS | _DRAWS:
            return None
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        name = _called(node)
        if name in _SEEDERS:
            return node.func.value if isinstance(node.func, ast.Attribute) else ast.Constant(None)
        if name in _GENERATORS:
            return ast.Call(func=node.func, args=[], keywords=[])
        return node


def _dead_assignments(tree: ast.Module) -> set[int]:
    """The ids of assignments to names read nowhere whose value draws or builds randomness and is
    made of nothing else. Class bodies are left alone: their names are read as attributes
    (`self.scale`), which a module's names do not show. Reads from other files are not followed."""
    nodes = list(ast.walk(tree))
    read = _reads(nodes).keys() | _exported(tree)
    in_classes = {id(statement) for node in nodes if isinstance(node, ast.ClassDef)
                  for statement in node.body}
    return {id(node) for node in nodes
            if isinstance(node, _ASSIGNMENTS) and node.value is not None
            and id(node) not in in_classes and _assigns_only(node, _assigned_names(node) - read)
            and any(_called(part) in _RANDOM for part in ast.walk(node.value))
            and all(isinstance(part, _INERT) or _called(part) in _RANDOM
                    for part in ast.walk(node.value))}


def _seed_variables(tree: ast.Module) -> set[str]:
    """The names the module assigns that are read, and read only where they seed random state: in
    the arguments of a seed-setting call or a generator's constructor, or in the value of another
    seed variable (`MY_SEED = BASE + SEED` makes BASE one too)."""
    seeding = {id(node) for node in _in_seeding_arguments(tree)}
    assignments = [statement for statement in tree.body if _assigned_names(statement)]
    candidates = {name for statement in assignments for name in _assigned_names(statement)}
    candidates -= _exported(tree)
    reads = _reads(ast.walk(tree))
    seed_variables: set[str] = set()
    while grown := {name for name in candidates - seed_variables
                    if name in reads and reads[name] <= seeding}:
        seed_variables |= grown
        seeding |= {id(node) for statement in assignments
                    if _assigns_only(statement, seed_variables) and statement.value
                    for node in ast.walk(statement.value)}
    return seed_variables


def _in_seeding_arguments(tree: ast.AST) -> list[ast.AST]:
    """Every node inside the arguments of a seed-setting call or a generator's constructor."""
    return [node for call in ast.walk(tree)
            if isinstance(call, ast.Call) and _called(call) in _SEEDERS | _GENERATORS
            for argument in call.args + [keyword.value for keyword in call.keywords]
            for node in ast.walk(argument)]


def _reads(nodes: Iterable[ast.AST]) -> dict[str, set[int]]:
    """Every name read among `nodes`, with the ids of the nodes that read it."""
    reads: dict[str, set[int]] = {}
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            reads.setdefault(node.id, set()).add(id(node))
    return reads


def _exported(tree: ast.Module) -> set[str]:
    """The names a module's `__all__` lists: other modules read them."""
    return {element.value for statement in tree.body if isinstance(statement, ast.Assign)
            and "__all__" in _assigned_names(statement)
            and isinstance(statement.value, ast.List | ast.Tuple)
            for element in statement.value.elts if isinstance(element, ast.Constant)}


def _targets(statement: ast.AST) -> list[ast.expr]:
    if isinstance(statement, ast.Assign):
        return statement.targets
    return [statement.target] if isinstance(statement, _ASSIGNMENTS) else []


def _assigned_names(statement: ast.AST) -> set[str]:
    """The plain names a statement assigns; none when it assigns anything else as well."""
    targets = _targets(statement)
    if not all(isinstance(target, ast.Name) for target in targets):
        return set()
    return {target.id for target in targets}


def _assigns_only(statement: ast.AST, names: set[str]) -> bool:
    """Whether `statement` assigns plain names, and only some of `names`."""
    assigned = _assigned_names(statement)
    return bool(assigned) and assigned <= names


def _called(node: ast.expr) -> str | None:
    """The last part of the name a call calls (`manual_seed` for `torch.manual_seed(1)`)."""
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return node.func.id if isinstance(node.func, ast.Name) else None
