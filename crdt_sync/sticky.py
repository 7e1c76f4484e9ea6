"""Stable positions: an index that follows the text around it as others edit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StickyIndex:
    """A position anchored to an element id (or to the start / end when ``item`` is None).

    ``assoc >= 0``: the position is just before ``item``; ``assoc < 0``: just after it.
    Create with :meth:`CRDTTextHandler.sticky_index`, resolve with
    :meth:`CRDTTextHandler.resolve`; :meth:`to_json` / :meth:`from_json` carry it
    over the network (e.g. in awareness states).
    """

    item: tuple[str, int] | None
    assoc: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.item is None:
            return {"item": None, "assoc": self.assoc}
        return {"item": [self.item[0], self.item[1]], "assoc": self.assoc}

    @classmethod
    def from_json(cls, data: Any) -> StickyIndex:
        """Parse :meth:`to_json` output; ``ValueError`` on anything else."""
        if not isinstance(data, dict):
            raise ValueError("a sticky index is a JSON object")
        assoc = data.get("assoc", 0)
        item = data.get("item")
        if not isinstance(assoc, int) or isinstance(assoc, bool):
            raise ValueError("sticky index 'assoc' must be an int")
        if item is None:
            return cls(None, assoc)
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or item[1] < 0
        ):
            raise ValueError("sticky index 'item' must be [peer, counter]")
        return cls((item[0], item[1]), assoc)
