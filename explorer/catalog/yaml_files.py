"""YAML from files a person wrote, loaded strictly: no duplicate keys, no alias bombs.

yaml.safe_load silently keeps the last of two equal keys (a typo'd second `model:` wins without a
word), and shares aliased nodes, so a "billion laughs" file of a few hundred bytes becomes a
structure that explodes when anything walks it (validation, json.dumps, an HTTP body). Here a
repeated key is an error with its line, and a document whose aliases would expand beyond
MAX_EXPANDED_NODES nodes is refused before it is built.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_EXPANDED_NODES = 100_000


class YamlFileError(ValueError):
    """The text is not YAML this explorer accepts; the message says where and why."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader reports unhashable keys itself
                if key in seen:
                    raise YamlFileError(
                        f"line {key_node.start_mark.line + 1}: key {str(key)[:60]!r} appears twice "
                        f"(first on line {seen[key] + 1})"
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict[int, int], limit: int) -> int:
    """Nodes the document would have with every alias written out (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a cycle (a recursive alias) counts as too large
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[key] = min(total, limit + 1)
    return memo[key]


def load_yaml(text: str) -> Any:
    """One YAML document, strictly; raises YamlFileError (with the line where one is known)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise YamlFileError(f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values (an alias bomb?)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        raise YamlFileError(f"{line}not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise YamlFileError("nested too deeply") from None
    finally:
        loader.dispose()
