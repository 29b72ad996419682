"""Named entries of one kind (distillation methods, ...), each registered in the module that defines it."""

from __future__ import annotations

from typing import Generic, Iterator, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


Entry = TypeVar("Entry", bound=Named)


class Registry(Generic[Entry]):
    """A name -> entry mapping that refuses a name twice and names what it holds when asked for another.

    Entries are registered by their ``name`` beside their definitions (``METHODS.register(Method("hint",
    ...))`` at the end of the module defining the Hint loss), so an entry's source is where its class is;
    the module that lists the kind imports every defining module explicitly.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, entry: Entry) -> Entry:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {list(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()
