"""A scripted trial for search-space tests: answers chosen values, records what was asked."""

from __future__ import annotations

from mtlsearch.search import SearchSpace


class Answers:
    """A trial that answers from ``values`` (else the first choice / the low end) and records
    which parameters were asked for, with their ranges."""

    def __init__(self, values: dict[str, object] | None = None) -> None:
        self.values = values or {}
        self.params: dict[str, object] = {}
        self.ranges: dict[str, tuple[object, object]] = {}

    def _answer(self, name: str, default: object) -> object:
        self.params[name] = self.values.get(name, default)
        return self.params[name]

    def suggest_int(self, name, low, high, step=1, log=False):
        self.ranges[name] = (low, high)
        return self._answer(name, low)

    def suggest_float(self, name, low, high, log=False):
        return self._answer(name, low)

    def suggest_categorical(self, name, choices):
        return self._answer(name, choices[0])


def _space(text: str) -> SearchSpace:
    return SearchSpace.from_yaml(text, source="space.yaml")
