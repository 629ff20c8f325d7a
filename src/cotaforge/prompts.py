"""Prompt banks and templates in `prompts/`, versioned by file name (`questions.v1.yaml`).

A version in use is never edited; a change is a new file. Templates are checked for unknown placeholders
when they are loaded, so a typo fails before any clip is processed.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import Any


from cotaforge.config import read_yaml_mapping
from cotaforge.errors import ConfigError


def prompts_dir() -> Path:
    """`prompts/` of a source checkout, else the copy packaged inside the wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the prompts/ folder is missing from this installation; reinstall cotaforge")


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check(node: Any, allowed: set[str], where: str) -> None:
    if isinstance(node, str):
        unknown = placeholders(node) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown placeholder(s) {sorted(unknown)} in {node!r}")
    elif isinstance(node, dict):
        for key, value in node.items():
            _check(value, allowed, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check(value, allowed, f"{where}[{i}]")


def _read_versioned(stem: str) -> tuple[Path, dict[str, Any]]:
    """`prompts/<stem>.yaml`, whose `version` must equal its stem (so a file cannot pose as another version)."""
    path = prompts_dir() / f"{stem}.yaml"
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist; pick a file stem from {prompts_dir()}")
    data = read_yaml_mapping(path)
    if data.get("version") != stem:
        raise ConfigError(f"{path}: 'version' must be {stem!r} (the file's stem)")
    return path, data


@lru_cache(maxsize=32)
def load_bank(stem: str, allowed: frozenset[str]) -> dict[str, Any]:
    """A YAML bank by file stem, e.g. 'questions.v1'; its `version` must equal the stem."""
    path, bank = _read_versioned(stem)
    _check(bank, set(allowed), path.name)
    return bank


def prompt_fingerprint(stems: list[str]) -> str:
    """Hash of the prompt files' contents: an edited version in use still redoes what it made."""
    import hashlib

    digest = hashlib.sha256()
    for stem in sorted(stems):
        for path in sorted(prompts_dir().glob(f"{stem}.*")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class ChatPrompt:
    """A versioned Jinja2 chat prompt (`prompts/<stem>.yaml` with `system` and `user` templates)."""

    def __init__(self, stem: str, system: str, user: str, variables: frozenset[str]) -> None:
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
        self.stem = stem
        self.variables = variables
        self._system = env.from_string(system)
        self._user = env.from_string(user)

    def render(self, **values: Any) -> tuple[str, str]:
        """(system text, user text); a variable the template names but the caller lacks raises at once."""
        return self._system.render(**values).strip(), self._user.render(**values).strip()


@lru_cache(maxsize=32)
def load_chat_prompt(stem: str, allowed: frozenset[str]) -> ChatPrompt:
    """A chat prompt by file stem, e.g. 'cot_llm.v1'; fails at load time on a variable the code does not pass."""
    import jinja2
    from jinja2 import meta

    path, data = _read_versioned(stem)
    if not isinstance(data.get("system"), str) or not isinstance(data.get("user"), str):
        raise ConfigError(f"{path}: needs 'system' and 'user' Jinja2 templates")
    env = jinja2.Environment()
    used: set[str] = set()
    for key in ("system", "user"):
        try:
            used |= meta.find_undeclared_variables(env.parse(data[key]))
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{path}: {key}: line {exc.lineno}: {exc.message}") from exc
    unknown = used - set(allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown variable(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return ChatPrompt(stem, data["system"], data["user"], frozenset(used))
